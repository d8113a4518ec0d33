//! The reactor form of the example: the same function, exported through `distchan_alloc`
//! and `distchan_run` so that one instance serves many jobs.

mod count;

distchan_task::reactor_json!(count::count);
