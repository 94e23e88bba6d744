//! `SESSION_STORE=file` (being written).

use tower_satchel::Backend;

use super::BoxError;

pub(super) async fn backend() -> Result<Backend, BoxError> {
    Err("the file store is not written yet".into())
}
