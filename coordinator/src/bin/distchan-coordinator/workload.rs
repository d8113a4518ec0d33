//! What the demo's workloads are made of: Mandelbrot tiles assembled into a picture, words
//! to capitalize, and the progress lines printed while results arrive. Workers compute them
//! with the protocol crate's built-in [`tasks`], so native and browser workers alike can
//! help.

use std::{path::Path, time::Instant};

use distchan_protocol::tasks::{self, Tile, TilePixels};

/// Size of the demo picture and its tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PictureSpec {
    /// Picture width in pixels.
    pub width: u32,
    /// Picture height in pixels.
    pub height: u32,
    /// Tile edge in pixels.
    pub tile: u32,
    /// Iteration limit per pixel.
    pub max_iter: u32,
}

impl Default for PictureSpec {
    fn default() -> Self {
        PictureSpec {
            width: 1600,
            height: 1000,
            tile: 50,
            max_iter: 100_000,
        }
    }
}

impl PictureSpec {
    /// The tiles covering the picture, row by row.
    pub fn tiles(&self) -> Vec<Tile> {
        tasks::tiles(self.width, self.height, self.tile, self.max_iter)
    }
}

/// A picture being assembled from tiles as their results arrive.
#[derive(Debug, Clone)]
pub struct Picture {
    spec: PictureSpec,
    rgba: Vec<u8>,
    tiles_placed: usize,
}

impl Picture {
    /// A black picture of the given size.
    pub fn new(spec: PictureSpec) -> Self {
        Picture {
            spec,
            rgba: vec![0; (spec.width * spec.height * 4) as usize],
            tiles_placed: 0,
        }
    }

    /// Copies a computed tile into place. Fails if the tile does not fit the picture.
    pub fn place(&mut self, px: &TilePixels) -> Result<(), String> {
        let fits = px.x + px.width <= self.spec.width
            && px.y + px.height <= self.spec.height
            && px.rgba.len() == (px.width * px.height * 4) as usize;
        if !fits {
            return Err(format!(
                "tile at ({}, {}) does not fit the picture",
                px.x, px.y
            ));
        }
        let row = (px.width * 4) as usize;
        for r in 0..px.height {
            let dst = (((px.y + r) * self.spec.width + px.x) * 4) as usize;
            let src = r as usize * row;
            self.rgba[dst..dst + row].copy_from_slice(&px.rgba[src..src + row]);
        }
        self.tiles_placed += 1;
        Ok(())
    }

    /// Tiles placed so far.
    pub fn tiles_placed(&self) -> usize {
        self.tiles_placed
    }

    /// Writes the picture as a PNG file.
    pub fn save_png(&self, path: &Path) -> std::io::Result<()> {
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        let mut encoder = png::Encoder::new(file, self.spec.width, self.spec.height);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
        writer
            .write_image_data(&self.rgba)
            .map_err(std::io::Error::other)?;
        Ok(())
    }
}

/// Words for the capitalize demo (the Go README's example, repeated to `count` jobs).
pub fn words(count: usize) -> Vec<String> {
    let base = ["why", "hello", "there", "world"];
    (0..count)
        .map(|i| format!("{} {i}", base[i % base.len()]))
        .collect()
}

/// Prints a progress line at most once a second, and a summary at the end.
#[derive(Debug)]
pub struct Progress {
    total: usize,
    done: usize,
    failed: usize,
    started: Instant,
    last_print: Instant,
    most_workers: usize,
}

impl Progress {
    /// Starts counting towards `total` jobs.
    pub fn new(total: usize) -> Self {
        let now = Instant::now();
        Progress {
            total,
            done: 0,
            failed: 0,
            started: now,
            last_print: now,
            most_workers: 0,
        }
    }

    /// Counts one outcome; returns a line to print when one is due.
    pub fn record(&mut self, ok: bool, workers: usize) -> Option<String> {
        self.done += 1;
        self.most_workers = self.most_workers.max(workers);
        if !ok {
            self.failed += 1;
        }
        let now = Instant::now();
        if now.duration_since(self.last_print).as_secs_f64() >= 1.0 || self.done == self.total {
            self.last_print = now;
            return Some(format!(
                "progress: {}/{} jobs ({:.0}%), {} failed, {} workers, {:.1} jobs/s",
                self.done,
                self.total,
                100.0 * self.done as f64 / self.total.max(1) as f64,
                self.failed,
                workers,
                self.rate()
            ));
        }
        None
    }

    /// Jobs per second so far.
    pub fn rate(&self) -> f64 {
        self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// The most workers connected at once while outcomes arrived.
    pub fn workers_seen(&self) -> usize {
        self.most_workers
    }

    /// Outcomes counted.
    pub fn done(&self) -> usize {
        self.done
    }

    /// Failed outcomes counted.
    pub fn failed(&self) -> usize {
        self.failed
    }

    /// Seconds since the start.
    pub fn elapsed_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picture_assembles_tiles() {
        let spec = PictureSpec {
            width: 20,
            height: 10,
            tile: 8,
            max_iter: 20,
        };
        let mut pic = Picture::new(spec);
        for t in spec.tiles() {
            pic.place(&tasks::mandelbrot(&t)).unwrap();
        }
        assert_eq!(pic.tiles_placed(), spec.tiles().len());
        let whole = tasks::mandelbrot(&Tile {
            x: 0,
            y: 0,
            width: 20,
            height: 10,
            ..spec.tiles()[0]
        });
        assert_eq!(
            pic.rgba, whole.rgba,
            "tiles must assemble into the whole picture"
        );
        let bad = TilePixels {
            x: 19,
            y: 0,
            width: 2,
            height: 1,
            rgba: vec![0; 8],
        };
        assert!(pic.place(&bad).is_err());
    }
}
