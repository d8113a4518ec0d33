;; The reactor twin of misbehave.wat: one instance serves many jobs through `distchan_run`.
;; The job is a JSON number; its first digit says what to do:
;;   0 (or anything not listed): echo the job     5: return something that is not JSON
;;   1: trap                                      6: fail with an error message
;;   2: loop forever                              7: count the jobs this instance served
;;   3: grow memory until refused, then trap
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $served (mut i32) (i32.const 0))
  ;; 32..: texts; 512..: the count's digits; 1024..: the job.
  (data (i32.const 32) "not json at all")
  (data (i32.const 64) "something went wrong")

  (func (export "distchan_alloc") (param $len i32) (result i32)
    (if (i32.gt_u (local.get $len) (i32.const 60000)) (then unreachable))
    (i32.const 1024))

  ;; The output at `ptr`, `len` bytes long; an error message when `failed`.
  (func $out (param $ptr i32) (param $len i32) (param $failed i32) (result i64)
    (i64.or
      (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
              (i64.extend_i32_u (local.get $len)))
      (select (i64.const 0x8000000000000000) (i64.const 0) (local.get $failed))))

  ;; Writes `n` in decimal ending at 520; returns where it starts.
  (func $digits (param $n i32) (result i32)
    (local $at i32)
    (local.set $at (i32.const 520))
    (loop $next
      (local.set $at (i32.sub (local.get $at) (i32.const 1)))
      (i32.store8 (local.get $at) (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $next (local.get $n)))
    (local.get $at))

  (func (export "distchan_run") (param $ptr i32) (param $len i32) (result i64)
    (local $cmd i32) (local $at i32)
    (global.set $served (i32.add (global.get $served) (i32.const 1)))
    (local.set $cmd (i32.load8_u (local.get $ptr)))
    (if (i32.eq (local.get $cmd) (i32.const 49)) (then unreachable))
    (if (i32.eq (local.get $cmd) (i32.const 50)) (then (loop $forever (br $forever))))
    (if (i32.eq (local.get $cmd) (i32.const 51)) (then
      (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
      unreachable))
    (if (i32.eq (local.get $cmd) (i32.const 53)) (then
      (return (call $out (i32.const 32) (i32.const 15) (i32.const 0)))))
    (if (i32.eq (local.get $cmd) (i32.const 54)) (then
      (return (call $out (i32.const 64) (i32.const 20) (i32.const 1)))))
    (if (i32.eq (local.get $cmd) (i32.const 55)) (then
      (local.set $at (call $digits (global.get $served)))
      (return (call $out (local.get $at) (i32.sub (i32.const 520) (local.get $at)) (i32.const 0)))))
    (call $out (local.get $ptr) (local.get $len) (i32.const 0)))
)
