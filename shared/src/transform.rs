//! The payload transform chain: the Go package's encoders and decoders.
//!
//! A [`Transform`] turns payload bytes into other bytes and back. A [`TransformChain`]
//! applies its transforms in registration order when encoding and undoes them in reverse
//! order when decoding. Both ends of a connection must register the same chain.
//!
//! [`Aes256GcmTransform`] is built in: authenticated encryption, so a payload encrypted
//! under another key (or tampered with) fails to decode instead of yielding garbage.
//!
//! ```
//! use distchan_protocol::transform::{Aes256GcmTransform, TransformChain, FnTransform};
//! use bytes::Bytes;
//!
//! let reverse = |b: Bytes| Ok::<_, String>(b.iter().rev().copied().collect::<Vec<u8>>().into());
//! let chain = TransformChain::new()
//!     .with(FnTransform::new("reverse", reverse, reverse))
//!     .with(Aes256GcmTransform::new(&[1; 32]));
//! let sealed = chain.encode(Bytes::from_static(b"abc"))?;
//! assert_eq!(chain.decode(sealed)?, Bytes::from_static(b"abc"));
//! # Ok::<(), distchan_protocol::Error>(())
//! ```

use std::{fmt, sync::Arc};

use aes_gcm::{
    aead::{Aead, AeadCore, KeyInit, OsRng},
    Aes256Gcm, Nonce,
};
use bytes::Bytes;

use crate::{Error, Result};

/// A reversible bytes-to-bytes step applied to every payload.
pub trait Transform: Send + Sync + 'static {
    /// A short name used in error messages.
    fn name(&self) -> &str;
    /// Transforms outgoing bytes.
    fn encode(&self, data: Bytes) -> Result<Bytes, String>;
    /// Undoes [`Transform::encode`]; fails when the bytes were not produced by it.
    fn decode(&self, data: Bytes) -> Result<Bytes, String>;
}

/// An ordered list of transforms, cheap to clone and share between tasks.
#[derive(Clone, Default)]
pub struct TransformChain {
    steps: Vec<Arc<dyn Transform>>,
}

impl fmt::Debug for TransformChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.steps.iter().map(|s| s.name()))
            .finish()
    }
}

impl TransformChain {
    /// An empty chain: payloads pass unchanged.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a transform (builder style).
    pub fn with(mut self, transform: impl Transform) -> Self {
        self.push(transform);
        self
    }

    /// Appends a transform.
    pub fn push(&mut self, transform: impl Transform) {
        self.steps.push(Arc::new(transform));
    }

    /// Appends an already shared transform.
    pub fn push_arc(&mut self, transform: Arc<dyn Transform>) {
        self.steps.push(transform);
    }

    /// True when the chain has no transforms.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Applies every transform in registration order.
    pub fn encode(&self, mut data: Bytes) -> Result<Bytes> {
        if self.steps.is_empty() {
            return Ok(data);
        }
        for step in &self.steps {
            data = step.encode(data).map_err(|reason| Error::Transform {
                transform: step.name().to_owned(),
                reason,
            })?;
        }
        Ok(data)
    }

    /// Undoes every transform, last registered first.
    pub fn decode(&self, mut data: Bytes) -> Result<Bytes> {
        if self.steps.is_empty() {
            return Ok(data);
        }
        for step in self.steps.iter().rev() {
            data = step.decode(data).map_err(|reason| Error::Transform {
                transform: step.name().to_owned(),
                reason,
            })?;
        }
        Ok(data)
    }
}

/// A transform made of two functions.
pub struct FnTransform<E, D> {
    name: String,
    encode: E,
    decode: D,
}

impl<E, D> FnTransform<E, D>
where
    E: Fn(Bytes) -> Result<Bytes, String> + Send + Sync + 'static,
    D: Fn(Bytes) -> Result<Bytes, String> + Send + Sync + 'static,
{
    /// Builds a transform from an encoding and a decoding function.
    pub fn new(name: impl Into<String>, encode: E, decode: D) -> Self {
        FnTransform {
            name: name.into(),
            encode,
            decode,
        }
    }
}

impl<E, D> Transform for FnTransform<E, D>
where
    E: Fn(Bytes) -> Result<Bytes, String> + Send + Sync + 'static,
    D: Fn(Bytes) -> Result<Bytes, String> + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn encode(&self, data: Bytes) -> Result<Bytes, String> {
        (self.encode)(data)
    }
    fn decode(&self, data: Bytes) -> Result<Bytes, String> {
        (self.decode)(data)
    }
}

/// Length of the random nonce that prefixes every AES-GCM payload.
const NONCE_LEN: usize = 12;

/// AES-256-GCM authenticated encryption of every payload.
///
/// Each payload becomes `nonce (12 bytes) || ciphertext || tag (16 bytes)` with a fresh
/// random nonce. Decoding with another key fails with "authentication failed".
#[derive(Clone)]
pub struct Aes256GcmTransform {
    cipher: Aes256Gcm,
}

impl fmt::Debug for Aes256GcmTransform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Aes256GcmTransform { key: <hidden> }")
    }
}

impl Aes256GcmTransform {
    /// Builds the transform from a 32-byte key.
    pub fn new(key: &[u8; 32]) -> Self {
        Aes256GcmTransform {
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    /// Builds the transform from a key given as 64 hexadecimal digits.
    pub fn from_hex(hex: &str) -> Result<Self> {
        let hex = hex.trim();
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(Error::config("an AES-256 key is 64 hexadecimal digits"));
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| Error::config("an AES-256 key is 64 hexadecimal digits"))?;
        }
        Ok(Self::new(&key))
    }
}

impl Transform for Aes256GcmTransform {
    fn name(&self) -> &str {
        "aes-256-gcm"
    }

    fn encode(&self, data: Bytes) -> Result<Bytes, String> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(&nonce, data.as_ref())
            .map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out.into())
    }

    fn decode(&self, data: Bytes) -> Result<Bytes, String> {
        if data.len() < NONCE_LEN + 16 {
            return Err(format!(
                "{} bytes is too short for an AES-GCM payload",
                data.len()
            ));
        }
        let (nonce, sealed) = data.split_at(NONCE_LEN);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map(Bytes::from)
            .map_err(|_| "authentication failed (wrong key or tampered payload)".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(name: &'static str) -> impl Transform {
        FnTransform::new(
            name,
            move |b: Bytes| Ok([b.as_ref(), name.as_bytes()].concat().into()),
            move |b: Bytes| {
                b.strip_suffix(name.as_bytes())
                    .map(Bytes::copy_from_slice)
                    .ok_or_else(|| format!("missing {name}"))
            },
        )
    }

    #[test]
    fn applies_in_registration_order_and_undoes_in_reverse() {
        let chain = TransformChain::new().with(tag("A")).with(tag("B"));
        let encoded = chain.encode(Bytes::from_static(b"x")).unwrap();
        assert_eq!(encoded, Bytes::from_static(b"xAB"));
        assert_eq!(chain.decode(encoded).unwrap(), Bytes::from_static(b"x"));
    }

    #[test]
    fn aes_round_trips_and_rejects_other_key() {
        let key = [42u8; 32];
        let mut other = key;
        other[31] ^= 1;
        let a = Aes256GcmTransform::new(&key);
        let b = Aes256GcmTransform::new(&other);
        let sealed = a.encode(Bytes::from_static(b"secret")).unwrap();
        assert_ne!(&sealed[NONCE_LEN..], b"secret");
        assert_eq!(
            a.decode(sealed.clone()).unwrap(),
            Bytes::from_static(b"secret")
        );
        assert!(b
            .decode(sealed)
            .unwrap_err()
            .contains("authentication failed"));
        assert!(a.decode(Bytes::from_static(b"short")).is_err());
    }

    #[test]
    fn chain_errors_name_the_transform() {
        let chain = TransformChain::new().with(Aes256GcmTransform::new(&[0; 32]));
        match chain.decode(Bytes::from(vec![0u8; 40])) {
            Err(Error::Transform { transform, .. }) => assert_eq!(transform, "aes-256-gcm"),
            other => panic!("expected a transform error, got {other:?}"),
        }
    }

    #[test]
    fn hex_keys() {
        assert!(Aes256GcmTransform::from_hex(&"ab".repeat(32)).is_ok());
        assert!(Aes256GcmTransform::from_hex("abc").is_err());
        assert!(Aes256GcmTransform::from_hex(&"zz".repeat(32)).is_err());
    }
}
