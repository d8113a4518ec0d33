;; The built-in `capitalize` task as a task module (a WASI command), for the benchmark: the job
;; (a JSON string) on standard input, the same string with ASCII letters upper-cased on
;; standard output. The bytes after a backslash are left as they are, so escapes survive.
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  ;; 0..8: an iovec; 8: bytes read or written; 1024..: the job (up to 64 KiB).

  ;; Upper-cases `len` bytes at `ptr` in place.
  (func $upper (param $ptr i32) (param $len i32)
    (local $end i32) (local $c i32) (local $escaped i32)
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $ptr) (local.get $end)))
        (local.set $c (i32.load8_u (local.get $ptr)))
        (if (local.get $escaped)
          (then (local.set $escaped (i32.const 0)))
          (else
            (if (i32.eq (local.get $c) (i32.const 92)) (then (local.set $escaped (i32.const 1))))
            (if (i32.lt_u (i32.sub (local.get $c) (i32.const 97)) (i32.const 26))
              (then (i32.store8 (local.get $ptr) (i32.sub (local.get $c) (i32.const 32)))))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 1)))
        (br $next))))

  (func (export "_start")
    (local $total i32)
    (block $eof
      (loop $more
        (i32.store (i32.const 0) (i32.add (i32.const 1024) (local.get $total)))
        (i32.store (i32.const 4) (i32.sub (i32.const 65536) (local.get $total)))
        (br_if $eof (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (br_if $eof (i32.eqz (i32.load (i32.const 8))))
        (local.set $total (i32.add (local.get $total) (i32.load (i32.const 8))))
        (br $more)))
    (call $upper (i32.const 1024) (local.get $total))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (local.get $total))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
)
