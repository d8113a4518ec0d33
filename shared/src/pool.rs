//! Buffers for large frames, kept and reused within the process.
//!
//! A frame of a large job or result (1 MiB, say) is encoded into a buffer of its own, lives
//! while it is sent and waits for its answer, and is dropped. Allocated fresh each time,
//! such a buffer is new memory from the system: the allocator maps it, the first write to
//! each page faults, and freeing it gives the pages back again. At a steady stream of
//! large frames that costs more CPU than the copy into the frame itself.
//!
//! [`take`] hands out a buffer of at least the size asked for, reused when one is kept;
//! [`share`] makes [`Bytes`] of a finished buffer, and the buffer comes back here when the
//! last of those bytes is dropped. Buffers below [`LARGE`] are left to the allocator (it
//! reuses small ones well), and at most [`KEEP_BYTES`] are kept, so an idle process holds
//! little.
//!
//! ```
//! use distchan_protocol::pool;
//!
//! let mut buf = pool::take(1 << 20);
//! buf.extend_from_slice(&[7; 1 << 20]);
//! let frame = pool::share(buf);
//! let part = frame.slice(10..20);
//! drop(frame);
//! assert_eq!(&part[..], &[7; 10]); // the buffer stays while any part of it is used
//! drop(part); // now it is kept for the next large frame
//! ```

use std::sync::Mutex;

use bytes::Bytes;

/// Buffers of this capacity or more are taken from and given back to the pool.
pub const LARGE: usize = 256 * 1024;

/// Most bytes of capacity the pool keeps.
pub const KEEP_BYTES: usize = 16 * 1024 * 1024;

/// Most buffers the pool keeps.
const KEEP_COUNT: usize = 32;

/// The process's pool, which [`take`] and [`share`] use.
static FRAMES: Pool = Pool::new();

// `take`, `share` and `reserve` are on the path of every job, small ones too: inlined into
// their callers, a small buffer costs them one comparison.

/// An empty buffer with room for at least `capacity` bytes: a kept one when one is large
/// enough (the smallest such), else a fresh one.
#[inline]
pub fn take(capacity: usize) -> Vec<u8> {
    FRAMES.take(capacity)
}

/// The bytes of `buf`; a large buffer comes back to the pool once they are all dropped.
#[inline]
pub fn share(buf: Vec<u8>) -> Bytes {
    FRAMES.share(buf)
}

/// Makes room for `additional` more bytes in `buf`, growing it at most once; a buffer that
/// grows large moves, with what it holds, into one taken from the pool.
#[inline]
pub fn reserve(buf: &mut Vec<u8>, additional: usize) {
    let need = buf.len() + additional;
    if need <= buf.capacity() {
        return;
    }
    if need >= LARGE {
        let mut large = take(need.max(2 * buf.len()));
        large.extend_from_slice(buf);
        *buf = large;
    } else {
        buf.reserve(additional);
    }
}

/// Kept buffers, and the sum of their capacities.
struct Pool(Mutex<(Vec<Vec<u8>>, usize)>);

impl Pool {
    const fn new() -> Self {
        Pool(Mutex::new((Vec::new(), 0)))
    }

    #[inline]
    fn take(&self, capacity: usize) -> Vec<u8> {
        if capacity < LARGE {
            return Vec::with_capacity(capacity);
        }
        self.take_large(capacity)
    }

    /// [`Pool::take`] of a large buffer: the smallest kept one that fits, or a fresh one.
    fn take_large(&self, capacity: usize) -> Vec<u8> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let fits = kept
            .0
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= capacity)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        match fits {
            Some(i) => {
                let buf = kept.0.swap_remove(i);
                kept.1 -= buf.capacity();
                buf
            }
            None => Vec::with_capacity(capacity),
        }
    }

    #[inline]
    fn share(&'static self, buf: Vec<u8>) -> Bytes {
        if buf.capacity() < LARGE {
            return Bytes::from(buf);
        }
        Bytes::from_owner(Kept(buf, self))
    }

    /// Keeps `buf` for reuse if there is room, making room by dropping smaller kept ones.
    fn give_back(&self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap > KEEP_BYTES {
            return;
        }
        buf.clear();
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let kept = &mut *guard;
        // Only smaller buffers make room; if dropping all of them is not enough, keep those.
        let (smaller, smaller_bytes) = kept
            .0
            .iter()
            .filter(|b| b.capacity() < cap)
            .fold((0, 0), |(n, bytes), b| (n + 1, bytes + b.capacity()));
        if kept.0.len() - smaller >= KEEP_COUNT || kept.1 - smaller_bytes + cap > KEEP_BYTES {
            return;
        }
        while kept.0.len() >= KEEP_COUNT || kept.1 + cap > KEEP_BYTES {
            let Some((i, small)) = kept
                .0
                .iter()
                .enumerate()
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, b)| (i, b.capacity()))
            else {
                break;
            };
            kept.0.swap_remove(i);
            kept.1 -= small;
        }
        kept.1 += cap;
        kept.0.push(buf);
    }
}

/// A buffer lent to [`Bytes`]; dropping it gives it back to its pool.
struct Kept(Vec<u8>, &'static Pool);

impl AsRef<[u8]> for Kept {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.1.give_back(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of the test's own, so that tests running at once do not share one.
    fn pool() -> &'static Pool {
        Box::leak(Box::new(Pool::new()))
    }

    fn kept(pool: &Pool) -> (usize, usize) {
        let kept = pool.0.lock().unwrap();
        assert_eq!(kept.1, kept.0.iter().map(Vec::capacity).sum::<usize>());
        (kept.0.len(), kept.1)
    }

    #[test]
    fn a_large_buffer_comes_back_when_its_bytes_are_dropped_and_is_reused() {
        let pool = pool();
        let mut buf = pool.take(LARGE);
        buf.extend_from_slice(&[1; 100]);
        let first = buf.as_ptr();
        let frame = pool.share(buf);
        let part = frame.slice(1..3);
        drop(frame);
        assert_eq!(kept(pool).0, 0, "given back while a part is still used");
        assert_eq!(&part[..], &[1, 1]);
        drop(part);
        assert_eq!(kept(pool).0, 1);
        let again = pool.take(LARGE);
        assert_eq!(again.as_ptr(), first, "the kept buffer is handed out again");
        assert!(again.is_empty(), "a reused buffer starts empty");
        assert_eq!(kept(pool), (0, 0));
    }

    #[test]
    fn a_buffer_too_small_for_what_is_asked_is_not_handed_out() {
        let pool = pool();
        drop(pool.share(pool.take(LARGE)));
        let big = pool.take(2 * LARGE);
        assert!(big.capacity() >= 2 * LARGE);
        assert_eq!(kept(pool).0, 1, "the smaller one stays kept");
    }

    #[test]
    fn reserving_keeps_what_the_buffer_holds_and_grows_once() {
        let mut buf = vec![9u8; 100];
        reserve(&mut buf, 10);
        assert!(buf.capacity() >= 110);
        reserve(&mut buf, LARGE);
        assert!(buf.capacity() >= LARGE + 100);
        assert_eq!(buf, vec![9u8; 100], "the contents moved with the buffer");
        let (ptr, cap) = (buf.as_ptr(), buf.capacity());
        buf.extend_from_slice(&vec![1; LARGE]);
        reserve(&mut buf, 0);
        assert_eq!(
            (buf.as_ptr(), buf.capacity()),
            (ptr, cap),
            "no growth when it fits"
        );
    }

    #[test]
    fn small_buffers_are_left_to_the_allocator() {
        let pool = pool();
        drop(pool.share(pool.take(LARGE - 1)));
        assert_eq!(kept(pool), (0, 0));
    }

    #[test]
    fn the_pool_keeps_at_most_its_budget_and_prefers_large_buffers() {
        let pool = pool();
        let small: Vec<Bytes> = (0..KEEP_COUNT)
            .map(|_| pool.share(pool.take(LARGE)))
            .collect();
        drop(small);
        assert_eq!(kept(pool), (KEEP_COUNT, KEEP_COUNT * LARGE));
        let quarter = KEEP_BYTES / 4;
        let large: Vec<Bytes> = (0..6).map(|_| pool.share(pool.take(quarter))).collect();
        drop(large);
        let (count, bytes) = kept(pool);
        assert!(bytes <= KEEP_BYTES, "{bytes} bytes kept");
        assert!(count <= KEEP_COUNT);
        let quarters = pool
            .0
            .lock()
            .unwrap()
            .0
            .iter()
            .filter(|b| b.capacity() >= quarter)
            .count();
        assert_eq!(
            quarters, 4,
            "large buffers displace small ones while the budget allows"
        );
        drop(pool.share(Vec::with_capacity(KEEP_BYTES + 1)));
        assert_eq!(
            kept(pool),
            (count, bytes),
            "a buffer over the budget is not kept"
        );
        drop(pool.share(Vec::with_capacity(quarter - 1)));
        assert_eq!(kept(pool), (count, bytes), "a smaller one displaces none");
    }

    #[test]
    fn a_buffer_with_no_room_to_make_drops_nothing_kept() {
        let pool = pool();
        let half = KEEP_BYTES / 2;
        let frames = [
            pool.share(pool.take(LARGE)),
            pool.share(pool.take(half + 1)),
        ];
        drop(frames);
        let before = kept(pool);
        assert_eq!(before, (2, LARGE + half + 1));
        drop(pool.share(pool.take(half)));
        assert_eq!(
            kept(pool),
            before,
            "the small one stays: dropping it makes too little room"
        );
    }
}
