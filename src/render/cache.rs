//! A disk cache of `helm template` output, keyed by a digest of everything helm reads (chart
//! tree, values, release, namespace, cluster version, helm binary). Rendering the same inputs
//! twice gives the same output, so a no-op reconcile need not run helm at all.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::Helm;

/// The render cache directory: `$CONVERGE_CACHE_DIR/render`, else
/// `${XDG_CACHE_HOME:-$HOME/.cache}/converge/render`.
pub struct RenderCache {
    dir: PathBuf,
}

impl RenderCache {
    /// Opens (creating) the cache directory; `None` when there is nowhere to keep it.
    pub fn open() -> Option<Self> {
        let base = std::env::var_os("CONVERGE_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("converge"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/converge"))
            })?;
        let dir = base.join("render");
        std::fs::create_dir_all(&dir).ok()?;
        Some(Self { dir })
    }

    /// The cached output for `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(key)).ok()
    }

    /// Stores `text` under `key`; written to a temporary name and renamed, so a reader never
    /// sees half a file (a crash mid-write leaves only a stray temporary).
    pub fn put(&self, key: &str, text: &str) {
        let tmp = self.dir.join(format!(".{key}.{}", std::process::id()));
        if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, self.dir.join(key)).is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// The cache key for one render.
pub fn key(inputs: &str, helm: &Helm, kube_version: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(inputs.as_bytes());
    h.update(format!("\0{}\0{}", helm.identity(), kube_version.unwrap_or("")).as_bytes());
    hex::encode(h.finalize())
}
