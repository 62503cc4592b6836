//! Embeds the git revision the binary was built from (`TOLLGATE_GIT_REVISION`: 12 hex digits,
//! `-dirty` when tracked files differ from it, `unknown` without git or `.git`), so every
//! `tollgate bench` report says which code it measured.
//!
//! The script reruns when HEAD moves (a commit, a checkout), when the index changes (`git add`)
//! and when a file under `src/` changes (which rebuilds the crate anyway); not on every build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    // `--no-optional-locks`: `git status` must not refresh (rewrite) the index, which would
    // trigger this script again on the next build.
    let output = Command::new("git")
        .arg("--no-optional-locks")
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn revision() -> String {
    let Some(hash) = git(&["rev-parse", "--short=12", "HEAD"]).filter(|h| !h.is_empty()) else {
        return "unknown".to_owned();
    };
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if changes.is_empty() => hash,
        Some(_) => format!("{hash}-dirty"),
        // Status failed: the revision is known but not whether the tree matches it.
        None => format!("{hash}-unknown-status"),
    }
}

/// The files whose change means a new revision or a changed tree: HEAD, the ref it points to
/// (or `packed-refs`) and the index. A worktree's HEAD and index live in its own git dir, its
/// refs in the common one. Only existing paths: cargo reruns the script on every build for a
/// path that does not exist.
fn watched_git_files() -> Vec<PathBuf> {
    let (Some(git_dir), Some(common_dir)) = (
        git(&["rev-parse", "--absolute-git-dir"]),
        git(&["rev-parse", "--git-common-dir"]),
    ) else {
        return Vec::new();
    };
    let git_dir = PathBuf::from(git_dir);
    let common_dir = Path::new(&common_dir);
    let common_dir = if common_dir.is_absolute() {
        common_dir.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(common_dir)
    };
    let mut files = vec![git_dir.join("HEAD"), git_dir.join("index")];
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        files.push(common_dir.join(reference));
    }
    files.push(common_dir.join("packed-refs"));
    files.retain(|path| path.exists());
    files
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src");
    for path in watched_git_files() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rustc-env=TOLLGATE_GIT_REVISION={}", revision());
}
