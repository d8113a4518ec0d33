//! A task module's bytes: from the on-disk cache when it holds them, otherwise from the
//! coordinator (then kept in the cache). Either way the bytes are checked against the hash
//! the coordinator announced before anything else sees them.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use distchan_protocol::{
    module::{self, ModuleError, ModuleSpec},
    Error, Result,
};

use crate::tls::{self, CertificateDer};

/// Longest wait for the module's download.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a worker keeps modules by default: `distchan/modules` in the user's cache folder.
pub fn default_cache_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("distchan").join("modules"))
}

/// The bytes of the module `spec` names, checked against its hash. `ws_url` is the
/// coordinator's WebSocket URL (the module is fetched from the same host), `token` the
/// access token, `cache` the folder of cached modules (`None`: no cache), `ca_certs` the
/// certificates trusted for `https://` besides the webpki roots.
pub async fn fetch(
    ws_url: &str,
    spec: &ModuleSpec,
    token: Option<&str>,
    cache: Option<&Path>,
    ca_certs: &[CertificateDer<'static>],
) -> Result<Vec<u8>> {
    if spec.sha256.len() != 64 || !spec.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ModuleError::Invalid(format!(
            "the coordinator announced {:?}, which is not a SHA-256",
            spec.sha256
        ))
        .into());
    }
    let cached = cache.map(|dir| dir.join(format!("{}.wasm", spec.sha256.to_ascii_lowercase())));
    if let Some(path) = &cached {
        if let Ok(bytes) = std::fs::read(path) {
            if module::check_hash(&spec.sha256, &bytes).is_ok() {
                tracing::debug!(path = %path.display(), "task module from the cache");
                return Ok(bytes);
            }
            tracing::warn!(path = %path.display(), "a cached module did not match its hash; fetching it again");
            let _ = std::fs::remove_file(path);
        }
    }
    let bytes = download(ws_url, spec, token, ca_certs).await?;
    module::check_hash(&spec.sha256, &bytes)?;
    if let Some(path) = &cached {
        if let Err(e) = store(path, &bytes) {
            tracing::warn!(path = %path.display(), error = %e, "could not cache the module");
        }
    }
    Ok(bytes)
}

async fn download(
    ws_url: &str,
    spec: &ModuleSpec,
    token: Option<&str>,
    ca_certs: &[CertificateDer<'static>],
) -> Result<Vec<u8>> {
    let url = module::module_url(ws_url, &spec.path)?;
    tracing::info!(%url, size = spec.size, "fetching the task module");
    let failed = |e: reqwest::Error| Error::connection_from(format!("fetching {url}"), e);
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls::client_config(ca_certs)?)
        .timeout(FETCH_TIMEOUT)
        .build()
        .map_err(failed)?;
    let mut request = client.get(&url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(failed)?;
    let status = response.status();
    if !status.is_success() {
        return Err(Error::connection(format!(
            "fetching {url}: the coordinator answered {status}"
        )));
    }
    if response.content_length().is_some_and(|n| n > spec.size) {
        return Err(ModuleError::Invalid(format!(
            "the coordinator serves more than the {} bytes it announced",
            spec.size
        ))
        .into());
    }
    let bytes = response.bytes().await.map_err(failed)?;
    Ok(bytes.to_vec())
}

/// Writes `bytes` to `path` through a temporary file, so a reader never sees half a module.
fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("wasm.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
