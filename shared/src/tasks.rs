//! Built-in demo tasks that every worker (native and browser) can run by name.
//!
//! A coordinator names its task in the welcome; a worker without a handler of its own
//! runs [`run`] on each job. Payloads are plain MessagePack (the transform chain is
//! applied outside).
//!
//! - [`CAPITALIZE`]: a string in, the same string upper-cased out (the Go README's example).
//! - [`ADD`]: a pair of integers in, their sum out (the Go package's adder example).
//! - [`MANDELBROT`]: a [`Tile`] in, its [`TilePixels`] out: CPU-heavy, and the results
//!   assemble into a picture.
//!
//! ```
//! use distchan_protocol::{payload, tasks};
//!
//! let out = tasks::run(tasks::CAPITALIZE, &payload::to_msgpack("why hello")?)?;
//! assert_eq!(payload::from_msgpack::<String>(&out)?, "WHY HELLO");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::payload::{from_msgpack, to_msgpack};

/// Name of the capitalizer task.
pub const CAPITALIZE: &str = "capitalize";
/// Name of the adder task.
pub const ADD: &str = "add";
/// Name of the Mandelbrot tile task.
pub const MANDELBROT: &str = "mandelbrot";
/// Every built-in task name.
pub const ALL: [&str; 3] = [CAPITALIZE, ADD, MANDELBROT];

/// True for tasks that take long enough to deserve a thread of their own (the native worker
/// runs them on blocking threads; cheap tasks run inline).
pub fn is_cpu_heavy(task: &str) -> bool {
    task == MANDELBROT
}

/// Runs the built-in task `task` on a plain MessagePack payload.
///
/// Errors (unknown task, payload of the wrong shape) are messages fit for an error result.
pub fn run(task: &str, payload: &[u8]) -> Result<Bytes, String> {
    fn go<I, O>(payload: &[u8], f: impl FnOnce(I) -> O) -> Result<Bytes, String>
    where
        I: serde::de::DeserializeOwned,
        O: Serialize,
    {
        let input: I = from_msgpack(payload).map_err(|e| e.to_string())?;
        to_msgpack(&f(input)).map_err(|e| e.to_string())
    }
    match task {
        CAPITALIZE => go(payload, |s: String| capitalize(&s)),
        ADD => go(payload, |(a, b): (i64, i64)| add(a, b)),
        MANDELBROT => go(payload, |tile: Tile| mandelbrot(&tile)),
        other => Err(format!(
            "unknown task `{other}` (built-in tasks: {})",
            ALL.join(", ")
        )),
    }
}

/// Upper-cases a string.
pub fn capitalize(s: &str) -> String {
    s.to_uppercase()
}

/// Adds two integers, wrapping on overflow.
pub fn add(a: i64, b: i64) -> i64 {
    a.wrapping_add(b)
}

/// One rectangle of a Mandelbrot picture.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tile {
    /// Left edge in pixels.
    pub x: u32,
    /// Top edge in pixels.
    pub y: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Width of the whole picture.
    pub image_width: u32,
    /// Height of the whole picture.
    pub image_height: u32,
    /// Real part of the picture's centre.
    pub center_re: f64,
    /// Imaginary part of the picture's centre.
    pub center_im: f64,
    /// Width of the whole picture in the complex plane.
    pub span: f64,
    /// Iteration limit per pixel.
    pub max_iter: u32,
}

/// The computed pixels of a [`Tile`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TilePixels {
    /// Left edge in pixels.
    pub x: u32,
    /// Top edge in pixels.
    pub y: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` RGBA pixels, row by row.
    #[serde(with = "serde_bytes")]
    pub rgba: Vec<u8>,
}

/// Splits a picture into tiles of at most `tile` pixels square, row by row.
pub fn tiles(image_width: u32, image_height: u32, tile: u32, max_iter: u32) -> Vec<Tile> {
    let tile = tile.max(1);
    let mut out = Vec::new();
    for y in (0..image_height).step_by(tile as usize) {
        for x in (0..image_width).step_by(tile as usize) {
            out.push(Tile {
                x,
                y,
                width: tile.min(image_width - x),
                height: tile.min(image_height - y),
                image_width,
                image_height,
                center_re: -0.743_643_887,
                center_im: 0.131_825_904,
                span: 0.012,
                max_iter,
            });
        }
    }
    out
}

/// Computes one tile: escape-time iteration with a smooth colour palette.
///
/// Plain IEEE-754 `f64` arithmetic only, so native and wasm workers produce identical bytes.
pub fn mandelbrot(t: &Tile) -> TilePixels {
    let scale = t.span / f64::from(t.image_width.max(1));
    let top = t.center_im + scale * f64::from(t.image_height) / 2.0;
    let left = t.center_re - t.span / 2.0;
    let mut rgba = Vec::with_capacity((t.width * t.height * 4) as usize);
    for py in t.y..t.y + t.height {
        let ci = top - f64::from(py) * scale;
        for px in t.x..t.x + t.width {
            let cr = left + f64::from(px) * scale;
            let (mut zr, mut zi, mut n) = (0.0f64, 0.0f64, 0u32);
            while n < t.max_iter && zr * zr + zi * zi <= 4.0 {
                let next = zr * zr - zi * zi + cr;
                zi = 2.0 * zr * zi + ci;
                zr = next;
                n += 1;
            }
            rgba.extend_from_slice(&colour(n, t.max_iter));
        }
    }
    TilePixels {
        x: t.x,
        y: t.y,
        width: t.width,
        height: t.height,
        rgba,
    }
}

fn colour(n: u32, max_iter: u32) -> [u8; 4] {
    if n >= max_iter {
        return [0, 0, 0, 255];
    }
    // A cyclic palette along a logarithmic scale of the escape count, eight steps per
    // doubling: neighbouring pixels get neighbouring colours whether they escape after 10
    // or after 50,000 iterations, so the bands follow the set's outline at any depth (the
    // count itself, cycled, is noise near the set). Integer arithmetic only, so every
    // platform agrees.
    let m = n + 1;
    let octave = 31 - m.leading_zeros();
    let eighths = if octave >= 3 {
        (m >> (octave - 3)) & 7
    } else {
        (m << (3 - octave)) & 7
    };
    let k = ((octave * 8 + eighths) * 2) % 64;
    let ramp = |phase: u32| -> u8 {
        let v = (k + phase) % 64;
        let tri = if v < 32 { v } else { 63 - v };
        (tri * 8).min(255) as u8
    };
    [ramp(0), ramp(21), ramp(42), 255]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capitalize_and_add() {
        let out = run(CAPITALIZE, &to_msgpack("why hello there world").unwrap()).unwrap();
        assert_eq!(
            from_msgpack::<String>(&out).unwrap(),
            "WHY HELLO THERE WORLD"
        );
        let out = run(ADD, &to_msgpack(&(40i64, 2i64)).unwrap()).unwrap();
        assert_eq!(from_msgpack::<i64>(&out).unwrap(), 42);
    }

    #[test]
    fn bad_input_is_an_error_message() {
        assert!(run(ADD, &to_msgpack("not numbers").unwrap()).is_err());
        assert!(run("nope", &[]).unwrap_err().contains("unknown task"));
    }

    #[test]
    fn tiles_cover_the_picture_exactly_once() {
        let ts = tiles(100, 70, 32, 50);
        assert_eq!(ts.len(), 4 * 3);
        let area: u32 = ts.iter().map(|t| t.width * t.height).sum();
        assert_eq!(area, 100 * 70);
        let px = mandelbrot(&ts[5]);
        assert_eq!(px.rgba.len(), (ts[5].width * ts[5].height * 4) as usize);
    }

    #[test]
    fn mandelbrot_is_not_uniform() {
        let t = tiles(64, 64, 64, 200)[0];
        let px = mandelbrot(&t);
        let first = &px.rgba[..4];
        assert!(
            px.rgba.chunks(4).any(|p| p != first),
            "a flat tile means the maths is broken"
        );
    }
}
