;; An example task module written by hand in the WebAssembly text format: no language, no
;; library, no distchan SDK, only WASI. It counts the words of its job: reads standard input
;; to its end and prints how many runs of non-blank bytes it holds, as a JSON number.
;;
;;   distchan-coordinator pipe --module examples/tasks/wc.wat < lines.jsonl
;;
;; Given the JSON string "the cat sat" it prints 3 (the quotes stick to the first and last
;; words, which does not change the count).
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0..8: an iovec; 8: bytes read or written; 16..32: the answer's digits; 1024..: input.

  (func (export "_start")
    (local $n i32) (local $i i32) (local $words i32) (local $in_word i32) (local $c i32)
    (local $at i32)
    (block $eof
      (loop $read
        (i32.store (i32.const 0) (i32.const 1024))
        (i32.store (i32.const 4) (i32.const 4096))
        (br_if $eof (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $n (i32.load (i32.const 8)))
        (br_if $eof (i32.eqz (local.get $n)))
        (local.set $i (i32.const 0))
        (block $chunk_done
          (loop $byte
            (br_if $chunk_done (i32.ge_u (local.get $i) (local.get $n)))
            (local.set $c (i32.load8_u (i32.add (i32.const 1024) (local.get $i))))
            ;; blank: space, tab, newline, carriage return
            (if (i32.or (i32.or (i32.eq (local.get $c) (i32.const 32)) (i32.eq (local.get $c) (i32.const 9)))
                        (i32.or (i32.eq (local.get $c) (i32.const 10)) (i32.eq (local.get $c) (i32.const 13))))
              (then (local.set $in_word (i32.const 0)))
              (else
                (if (i32.eqz (local.get $in_word))
                  (then (local.set $words (i32.add (local.get $words) (i32.const 1)))))
                (local.set $in_word (i32.const 1))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $byte)))
        (br $read)))
    ;; The count in decimal, written backwards from 32.
    (local.set $at (i32.const 32))
    (loop $digit
      (local.set $at (i32.sub (local.get $at) (i32.const 1)))
      (i32.store8 (local.get $at) (i32.add (i32.const 48) (i32.rem_u (local.get $words) (i32.const 10))))
      (local.set $words (i32.div_u (local.get $words) (i32.const 10)))
      (br_if $digit (local.get $words)))
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (i32.sub (i32.const 32) (local.get $at)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
)
