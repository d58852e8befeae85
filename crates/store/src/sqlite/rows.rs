//! Turning SQLite rows into model values (the shared decoders of
//! [`crate::rows`], for [`SqliteRow`]).

use sqlx::sqlite::SqliteRow;

crate::rows::row_decoders!(SqliteRow, sqlx::Sqlite);
