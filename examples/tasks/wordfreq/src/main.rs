//! The command form of the example: one job per fresh instance, the job (a JSON string) on
//! standard input, the word counts (a JSON object) on standard output.

mod count;

fn main() {
    distchan_task::command_json(count::count)
}
