//! The store conformance suite: one set of tests every store runs with one line.
//!
//! ```ignore
//! #[macro_use]
//! mod conformance;
//!
//! mod memory {
//!     server_store_conformance!(|| async { tower_satchel::MemoryStore::new() });
//! }
//! ```
//!
//! `server_store_conformance!` runs the store contract (DESIGN.md §5) directly against the store,
//! then the HTTP suite through `SessionLayer`. `client_store_conformance!` runs the HTTP suite for a
//! client-side store, where the cases such a store cannot meet (revocation, replay after logout,
//! concurrent change-set merge) are asserted the other way, as documented exceptions.
//!
//! Each call of the closure must give an independent, empty store.
#![allow(
    dead_code,
    unused_macros,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

pub mod contract;
pub mod harness;
pub mod http;

/// Which kind of store an HTTP case runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// A `SessionStore`: records on the server, revocable.
    Server,
    /// The sealed-cookie store: the record travels in the cookie.
    Client,
}

macro_rules! server_store_conformance {
    ($make:expr) => {
        server_store_conformance!(@contract $make;
            load_of_a_missing_key_is_none,
            create_then_load_round_trips,
            create_refuses_an_existing_key,
            create_replaces_an_expired_record_entirely,
            save_applies_only_the_change_set,
            save_of_a_cleared_change_set_replaces_the_data,
            save_of_a_missing_record_is_gone_and_creates_nothing,
            save_of_an_expired_record_is_gone,
            load_of_an_expired_record_is_none,
            touch_moves_only_the_idle_deadline,
            touch_of_a_missing_record_is_gone,
            a_deadline_from_a_replaced_policy_is_not_applied,
            delete_is_idempotent,
            delete_expired_is_bounded_and_spares_live_records,
            owner_index_lists_and_revokes,
            a_listing_from_a_clock_ahead_keeps_the_owner_index,
            owner_index_follows_owner_changes_and_deletes,
            concurrent_saves_of_different_keys_all_persist,
            keys_are_isolated_between_sessions,
            a_value_too_deep_to_read_back_is_refused,
            rename_moves_the_record_with_the_changes,
            rename_keeps_what_the_changes_leave_alone,
            rename_of_a_missing_or_expired_record_is_gone,
            rename_onto_a_live_record_is_taken_and_changes_nothing,
            rename_onto_an_expired_record_replaces_it,
            rename_is_one_step_for_a_concurrent_save,
            rename_is_one_step_for_a_concurrent_revocation,
        );
        server_store_conformance!(@http $make, $crate::conformance::Side::Server);
    };
    (@contract $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = ($make)().await;
                $crate::conformance::contract::$name(store).await;
            }
        )*
    };
    (@http $make:expr, $side:expr) => {
        conformance_http_cases!($make, $side;
            untouched_requests_get_no_cookie_and_no_store_record,
            reading_a_new_session_sets_vary_but_no_cookie,
            first_write_sets_a_cookie_with_secure_defaults,
            returning_visitors_see_their_data,
            an_unknown_token_is_not_adopted,
            garbled_tokens_get_a_fresh_session,
            cycle_id_keeps_data_and_retires_the_old_token,
            cycle_id_then_server_error_keeps_the_old_session,
            destroy_sends_a_matching_removal_cookie,
            destroy_mirrors_attributes_away_from_their_defaults,
            server_errors_persist_nothing,
            server_errors_persist_when_configured,
            idle_timeout_is_enforced,
            a_write_with_an_ended_token_gets_a_new_id,
            absolute_lifetime_is_enforced_despite_activity,
            cycle_id_does_not_extend_the_absolute_lifetime,
            a_shortened_absolute_lifetime_holds_for_existing_sessions,
            touch_is_throttled,
            no_touch_once_the_idle_deadline_reaches_the_absolute_one,
            concurrent_requests_writing_different_keys,
            a_save_after_a_concurrent_destroy_does_not_resurrect,
            owner_sessions_can_be_revoked,
            one_session_of_the_owner_can_be_listed_and_ended,
            owner_sessions_follow_a_shortened_absolute_lifetime,
            cycle_id_keeps_an_owner_set_concurrently,
            a_touch_keeps_the_expiry_a_concurrent_request_set,
            remove_returns_the_old_value,
            clear_empties_the_session,
            remember_me_expiry_persists,
            browser_session_cookies_have_no_max_age,
            max_age_is_capped_at_400_days,
            max_age_never_exceeds_the_server_deadline,
            a_fractional_expiry_saved_sends_its_cookie,
            a_cookie_the_browser_still_sends_still_opens,
            a_far_expiry_date_is_reached_by_refreshing_the_cookie,
            header_transport_ignores_cookies,
            destroy_then_insert_starts_a_new_session,
            save_writes_a_new_session_before_the_response,
            saved_changes_are_visible_to_other_requests_before_the_response,
            a_saved_write_stands_despite_a_server_error,
            cycle_id_saved_then_a_server_error_moves_to_the_new_id,
            destroy_saved_ends_the_session_before_the_response,
            save_after_a_concurrent_destroy_reports_the_end,
            a_write_after_a_concurrent_rotation_does_not_revive_the_old_id,
        );
    };
}

macro_rules! client_store_conformance {
    ($make:expr) => {
        server_store_conformance!(@http $make, $crate::conformance::Side::Client);
    };
}

macro_rules! conformance_http_cases {
    ($make:expr, $side:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let backend = tower_satchel::IntoBackend::into_backend(($make)().await);
                $crate::conformance::http::$name(backend, $side).await;
            }
        )*
    };
}
