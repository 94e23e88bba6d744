//! `SESSION_STORE=cookie` (being written).

use tower_satchel::Backend;

use super::BoxError;

pub(super) async fn backend() -> Result<Backend, BoxError> {
    Err("the cookie store is not written yet".into())
}
