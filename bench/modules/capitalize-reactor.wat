;; The built-in `capitalize` task as a reactor task module, for the benchmark: one instance
;; answers many jobs through `distchan_alloc` and `distchan_run`. The job (a JSON string) is
;; upper-cased in place (ASCII letters; the byte after a backslash is left as it is) and
;; returned as the output.
(module
  (memory (export "memory") 2)
  ;; 1024..: the job (up to 64 KiB).

  (func (export "distchan_alloc") (param $len i32) (result i32)
    (if (i32.gt_u (local.get $len) (i32.const 65536)) (then unreachable))
    (i32.const 1024))

  (func (export "distchan_run") (param $ptr i32) (param $len i32) (result i64)
    (local $at i32) (local $end i32) (local $c i32) (local $escaped i32)
    (local.set $at (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $at) (local.get $end)))
        (local.set $c (i32.load8_u (local.get $at)))
        (if (local.get $escaped)
          (then (local.set $escaped (i32.const 0)))
          (else
            (if (i32.eq (local.get $c) (i32.const 92)) (then (local.set $escaped (i32.const 1))))
            (if (i32.lt_u (i32.sub (local.get $c) (i32.const 97)) (i32.const 26))
              (then (i32.store8 (local.get $at) (i32.sub (local.get $c) (i32.const 32)))))))
        (local.set $at (i32.add (local.get $at) (i32.const 1)))
        (br $next)))
    ;; The output is the job itself: (ptr << 32) | len.
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))
)
