//! Migration of a store written before redb 3 (redb's file format v2, revisor 0.1 until its store moved
//! to redb 4). redb 3 and later cannot read that format, and encode tuple keys (the event log's
//! `(service, sequence)`) differently, so the store is copied rather than upgraded in place: every table
//! is read with redb 2 and written with the current redb into a new file beside it; then the old file
//! is kept as `<file>.redb2-backup` and the new one takes its name. A migration cut short leaves the old
//! file as it was, and runs again at the next start.

use std::path::{Path, PathBuf};

use crate::StoreError;

const OBJECT_TABLES: [&str; 4] = ["services", "configurations", "revisions", "rollouts"];

fn failed(path: &Path, what: impl std::fmt::Display) -> StoreError {
    StoreError::Open {
        path: path.display().to_string(),
        message: format!("migrating the store from redb 2's file format: {what}"),
    }
}

/// Where the old file is kept after a migration.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".redb2-backup");
    path.with_file_name(name)
}

fn staged_path(path: &Path) -> PathBuf {
    let mut staged = path.as_os_str().to_os_string();
    staged.push(".migrating");
    PathBuf::from(staged)
}

/// A migration stopped between moving the old file away and moving the new one in: the new one is
/// complete (it was committed before), so it takes its place.
pub fn finish_interrupted(path: &Path) -> Result<(), StoreError> {
    let staged = staged_path(path);
    if !path.exists() && staged.exists() && backup_path(path).exists() {
        std::fs::rename(&staged, path).map_err(|e| failed(path, e))?;
    }
    Ok(())
}

/// Migrates the redb 2 store at `path` (see the module's doc).
pub fn from_redb2(path: &Path) -> Result<(), StoreError> {
    use redb2::{ReadableTable as _, TableDefinition as Old};

    let fail = |e: &dyn std::fmt::Display| failed(path, e);
    let staged = staged_path(path);
    let _ = std::fs::remove_file(&staged);
    let old = redb2::Database::open(path).map_err(|e| fail(&e))?;
    let new = redb::Database::create(&staged).map_err(|e| fail(&e))?;
    let read = old.begin_read().map_err(|e| fail(&e))?;
    let write = new.begin_write().map_err(|e| fail(&e))?;
    // Every entry of the old table `$old` (a redb 2 definition) into `$new` (the current one); a table
    // the old store never made is skipped.
    macro_rules! copy_table {
        ($old:expr, $new:expr) => {{
            let mut to = write.open_table($new).map_err(|e| fail(&e))?;
            match read.open_table($old) {
                Ok(from) => {
                    for entry in from.iter().map_err(|e| fail(&e))? {
                        let (k, v) = entry.map_err(|e| fail(&e))?;
                        to.insert(k.value(), v.value()).map_err(|e| fail(&e))?;
                    }
                }
                Err(redb2::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(fail(&e)),
            }
        }};
    }
    for name in OBJECT_TABLES {
        copy_table!(
            Old::<&str, &[u8]>::new(name),
            redb::TableDefinition::<&str, &[u8]>::new(name)
        );
    }
    copy_table!(Old::<(&str, u64), &[u8]>::new("events"), crate::EVENTS);
    copy_table!(Old::<&str, u64>::new("counters"), crate::COUNTERS);
    write.commit().map_err(|e| fail(&e))?;
    drop(read);
    drop(old);
    drop(new);
    std::fs::rename(path, backup_path(path)).map_err(|e| fail(&e))?;
    std::fs::rename(&staged, path).map_err(|e| fail(&e))?;
    Ok(())
}
