//! `POST /v1/tollgate/backup {"to": DIR}`: an online, consistent backup of the data directory
//! (SPEC 3.1), taken by the running server while ingest goes on: a RocksDB checkpoint (hard
//! links of the table files plus a copy of the write-ahead log; a copy where `DIR` is on
//! another file system) of every column family at one instant, what a crash at that instant
//! would leave. A second process cannot take it: RocksDB refuses to pin the files of a database
//! another process has open. `DIR` is a path on the server's host; it must not exist, and its
//! parent must. One backup runs at a time. `tollgate backup --url --token --to` calls this.
//!
//! Restore is starting a server on the backup (README, "Backup and restore"): it recovers from
//! it as after a crash, and every payment in flight reconciles with the provider before it sends
//! anything.

use super::openapi::{Data, Routes};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use actix_web::{HttpResponse, web};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::request::{self, Text};
use super::wire;
use crate::domain::Timestamp;
use crate::storage::STORAGE_FORMAT_VERSION;

/// Characters `to` may have at most.
const PATH_CHARS_MAX: usize = 4_096;

/// Set while a backup runs.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Clears [`RUNNING`] when the backup ends, however it ends.
struct Running;

impl Running {
    fn claim() -> Option<Running> {
        RUNNING
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Running)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::Release);
    }
}

pub fn routes(routes: &mut Routes<'_>) {
    routes.post(
        "/v1/tollgate/backup",
        "backup",
        "Write an online, consistent backup of the data directory to a directory on the server's host (Tollgate)",
        backup,
    )
    .body::<BackupBody>()
    .answers::<Data<BackupView>>();
}

/// Checks `to`: an absolute path without `..`, not there yet (nor RocksDB's staging directory
/// `<to>.tmp`, whose files a checkpoint deletes first), under an existing directory that is not
/// inside the data directory `data`.
fn target(to: &str, data: &Path) -> ApiResult<PathBuf> {
    let bad = |why: &str| ApiError::BadRequest(format!("to: {why}"));
    if to.is_empty() || to.chars().count() > PATH_CHARS_MAX || to.chars().any(char::is_control) {
        return Err(bad(&format!(
            "a path of 1 to {PATH_CHARS_MAX} characters without control characters"
        )));
    }
    let path = Path::new(to);
    if !path.is_absolute() {
        return Err(bad("must be an absolute path on the server's host"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(bad("must not contain \"..\""));
    }
    if path.symlink_metadata().is_ok() {
        return Err(ApiError::Conflict(format!(
            "to: {to} exists already: a backup goes to a new directory"
        )));
    }
    let staging = PathBuf::from(format!("{to}.tmp"));
    if staging.symlink_metadata().is_ok() {
        return Err(ApiError::Conflict(format!(
            "to: {} exists: RocksDB stages the backup there and would delete what it holds",
            staging.display()
        )));
    }
    let parent = match path.parent() {
        Some(parent) if parent.is_dir() => parent,
        _ => return Err(bad("its parent directory does not exist")),
    };
    let inside_data = match (parent.canonicalize(), data.canonicalize()) {
        (Ok(parent), Ok(data)) => parent.starts_with(&data),
        _ => false,
    };
    if inside_data {
        return Err(bad("must not be inside the data directory"));
    }
    Ok(path.to_path_buf())
}

/// Makes the finished backup private to the server's user and its name durable.
fn seal(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Bytes of the files under `dir`.
fn size_of(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => size_of(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A backup written.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct BackupView {
    /// The directory written.
    pub to: String,
    /// The log position's time the backup holds everything up to.
    #[schema(value_type = super::request::Time)]
    pub at: String,
    pub storage_format: u32,
    pub bytes: u64,
    pub millis: u64,
}

/// `POST /v1/tollgate/backup`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub struct BackupBody {
    /// An absolute directory on the server's host that does not exist yet, outside the data
    /// directory.
    pub to: Text,
}

async fn backup(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let request: BackupBody = request::read(&body)?;
    let to = target(&request.to.0, state.engine.data_dir())?;
    state.engine.check_ready()?;
    let Some(running) = Running::claim() else {
        return Err(ApiError::InProgress(
            "a backup is running; retry when it is done".into(),
        ));
    };
    let engine = state.engine.clone();
    let started = Instant::now();
    let at = engine.now_ms();
    let dir = to.clone();
    // The claim lives in the copying thread: a client that hangs up does not free it while
    // the copy still runs.
    let copied = web::block(move || {
        let _running = running;
        engine.store().copy_to(&dir).map_err(|e| e.to_string())?;
        seal(&dir).map_err(|e| format!("sealing the backup: {e}"))?;
        Ok::<u64, String>(size_of(&dir))
    })
    .await
    .map_err(|_| ApiError::Failed("the backup task failed".into()))?;
    // The running store is untouched (a checkpoint only reads it): not a storage failure of
    // the engine, which goes on; the operator is told why. RocksDB writes the checkpoint under
    // a temporary name and renames it when complete; nothing is deleted here (the path may be
    // someone else's by now).
    let bytes = copied.map_err(|error| {
        tracing::error!(%error, to = %to.display(), "backup failed");
        ApiError::Failed(format!("backup to {} failed: {error}", to.display()))
    })?;
    let millis = started.elapsed().as_millis() as u64;
    tracing::info!(to = %to.display(), bytes, millis, "backup written");
    Ok(wire::data(BackupView {
        to: to.display().to_string(),
        at: wire::time(Timestamp(at)),
        storage_format: STORAGE_FORMAT_VERSION,
        bytes,
        millis,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_new_absolute_path_under_an_existing_directory_is_a_target() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().display().to_string();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::create_dir_all(dir.path().join("staged.tmp")).unwrap();
        assert!(target(&format!("{base}/backup-1"), &data).is_ok());
        for (to, status) in [
            ("relative/dir".to_owned(), 400),
            (String::new(), 400),
            (format!("{base}/a/../b"), 400),
            (format!("{base}/missing/backup"), 400),
            (format!("{base}/bad\nname"), 400),
            (base.clone(), 409),
            (format!("{base}/staged"), 409),
            (format!("{base}/data/backup"), 400),
            (format!("{base}/data/sub/backup"), 400),
        ] {
            let err = target(&to, &data).unwrap_err();
            let code = actix_web::ResponseError::status_code(&err).as_u16();
            assert_eq!(code, status, "{to:?}: {err}");
        }
    }
}
