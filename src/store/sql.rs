//! `PostgresStore` and `SqliteStore` through sqlx. (Being written for issue 6.)
