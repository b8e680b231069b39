//! The store's errors: what went wrong with which object.

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {key:?} not found")]
    NotFound { kind: &'static str, key: String },
    #[error("{kind} {key:?} already exists")]
    AlreadyExists { kind: &'static str, key: String },
    #[error("{kind} {key:?} was modified: resourceVersion {given} is stale, the current one is {current}")]
    Conflict {
        kind: &'static str,
        key: String,
        given: String,
        current: String,
    },
    #[error("{kind} {key:?} is stored in a form that cannot be read: {message}")]
    Corrupt {
        kind: &'static str,
        key: String,
        message: String,
    },
    #[error("cannot open the store at {path}: {message}")]
    Open { path: String, message: String },
    #[error("storage: {0}")]
    Storage(Box<redb::Error>),
    /// A caller's own refusal inside a transaction (the transaction is aborted).
    #[error("{0}")]
    Rejected(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Storage(Box::new(e.into()))
            }
        }
    )*};
}

from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::DatabaseError
);
