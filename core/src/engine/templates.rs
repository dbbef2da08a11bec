//! Finding templates on disk, in the order the seed's TaskConfigFinder used:
//! `{dir}/{namespace}/{name}/{version}.yaml`, `{dir}/{name}/{version}.yaml`,
//! `{dir}/{name}.yaml` (each also as `.yml`; `.json` too).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::template::{parse_text, TemplateDoc};

const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// The candidate paths, most specific first.
pub fn candidates(dir: &str, namespace: &str, name: &str, version: Option<&str>) -> Vec<PathBuf> {
    let dir = Path::new(dir);
    let mut out = Vec::new();
    if let Some(v) = version {
        for ext in EXTENSIONS {
            out.push(dir.join(namespace).join(name).join(format!("{v}.{ext}")));
        }
        for ext in EXTENSIONS {
            out.push(dir.join(name).join(format!("{v}.{ext}")));
        }
    }
    for ext in EXTENSIONS {
        out.push(dir.join(format!("{name}.{ext}")));
    }
    out
}

/// Reads the first candidate that exists and declares the wanted namespace, name and
/// version (a `{name}.yaml` holding another version is skipped).
pub fn find_in_directory(
    dir: &str,
    namespace: &str,
    name: &str,
    version: Option<&str>,
) -> Result<Option<TemplateDoc>> {
    // Names come from requests: never let them walk out of the template directory.
    let safe = |s: &str| !s.is_empty() && !s.contains(['/', '\\']) && s != "." && s != "..";
    if !safe(namespace) || !safe(name) || version.is_some_and(|v| !safe(v)) {
        return Ok(None);
    }
    for path in candidates(dir, namespace, name, version) {
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::invalid_argument(format!("cannot read template {}: {e}", path.display()))
        })?;
        let doc = parse_text(&text).map_err(|mut e| {
            e.message = format!("{}: {}", path.display(), e.message);
            e
        })?;
        if doc.namespace == namespace
            && doc.name == name
            && version.is_none_or(|v| v == doc.version)
        {
            return Ok(Some(doc));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_order_and_version_match() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let body = |v: &str| {
            format!("namespace: orders\nname: fulfill\nversion: '{v}'\nsteps: [{{name: a, handler: h}}]\n")
        };
        std::fs::create_dir_all(d.join("orders/fulfill")).unwrap();
        std::fs::create_dir_all(d.join("fulfill")).unwrap();
        std::fs::write(d.join("orders/fulfill/1.0.0.yaml"), body("1.0.0")).unwrap();
        std::fs::write(d.join("fulfill/2.0.0.yml"), body("2.0.0")).unwrap();
        std::fs::write(d.join("fulfill.yaml"), body("3.0.0")).unwrap();
        let dir_s = d.to_str().unwrap();
        let find = |v: Option<&str>| {
            find_in_directory(dir_s, "orders", "fulfill", v)
                .unwrap()
                .map(|d| d.version)
        };
        assert_eq!(find(Some("1.0.0")).as_deref(), Some("1.0.0"));
        assert_eq!(find(Some("2.0.0")).as_deref(), Some("2.0.0"));
        assert_eq!(find(Some("3.0.0")).as_deref(), Some("3.0.0"));
        assert_eq!(find(None).as_deref(), Some("3.0.0"));
        assert_eq!(find(Some("9.9.9")), None);
        assert_eq!(
            find_in_directory(dir_s, "orders", "../etc", None)
                .unwrap()
                .map(|d| d.version),
            None
        );
    }
}
