//! Turning PostgreSQL rows into model values (the shared decoders of
//! [`crate::rows`], for [`PgRow`]).

use sqlx::postgres::PgRow;

crate::rows::row_decoders!(PgRow, sqlx::Postgres);
