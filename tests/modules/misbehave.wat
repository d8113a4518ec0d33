;; A WASI command that misbehaves on request, for the worker's sandbox tests. The job is a
;; JSON number; its first digit says what to do:
;;   0 (or anything not listed): echo the job     4: try to open /etc/passwd
;;   1: trap                                      5: print something that is not JSON
;;   2: loop forever                              6: complain on stderr, exit with code 3
;;   3: grow memory until refused, then trap
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0..8: an iovec; 8: bytes read or written; 16..: texts; 1024..: the job.
  (data (i32.const 16) "\"opened\"")
  (data (i32.const 32) "not json at all")
  (data (i32.const 64) "something went wrong\n")
  (data (i32.const 96) "/etc/passwd")

  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))

  ;; Reads standard input to its end into 1024..; returns its length.
  (func $read_all (result i32)
    (local $total i32)
    (block $done
      (loop $more
        (i32.store (i32.const 0) (i32.add (i32.const 1024) (local.get $total)))
        (i32.store (i32.const 4) (i32.sub (i32.const 60000) (local.get $total)))
        (br_if $done (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (br_if $done (i32.eqz (i32.load (i32.const 8))))
        (local.set $total (i32.add (local.get $total) (i32.load (i32.const 8))))
        (br $more)))
    (local.get $total))

  (func (export "_start")
    (local $len i32) (local $cmd i32) (local $errno i32)
    (local.set $len (call $read_all))
    (local.set $cmd (i32.load8_u (i32.const 1024)))
    (if (i32.eq (local.get $cmd) (i32.const 49)) (then unreachable))
    (if (i32.eq (local.get $cmd) (i32.const 50)) (then (loop $forever (br $forever))))
    (if (i32.eq (local.get $cmd) (i32.const 51)) (then
      (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
      unreachable))
    (if (i32.eq (local.get $cmd) (i32.const 52)) (then
      (local.set $errno (call $path_open (i32.const 3) (i32.const 0) (i32.const 96) (i32.const 11)
        (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 8)))
      (if (i32.eqz (local.get $errno)) (then
        (call $write (i32.const 1) (i32.const 16) (i32.const 8))
        (return)))
      (call $proc_exit (local.get $errno))))
    (if (i32.eq (local.get $cmd) (i32.const 53)) (then
      (call $write (i32.const 1) (i32.const 32) (i32.const 15))
      (return)))
    (if (i32.eq (local.get $cmd) (i32.const 54)) (then
      (call $write (i32.const 2) (i32.const 64) (i32.const 21))
      (call $proc_exit (i32.const 3))))
    (call $write (i32.const 1) (i32.const 1024) (local.get $len)))
)
