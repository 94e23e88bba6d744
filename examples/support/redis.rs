//! `SESSION_STORE=redis` (being written).

use tower_satchel::Backend;

use super::BoxError;

pub(super) async fn backend() -> Result<Backend, BoxError> {
    Err("the redis store is not written yet".into())
}
