//! The memory store against the conformance suite.

#[macro_use]
mod conformance;

mod memory {
    server_store_conformance!(|| async { tower_satchel::MemoryStore::new() });
}

mod memory_one_shard {
    // One shard: every session contends for the same lock; the contract must still hold.
    server_store_conformance!(|| async { tower_satchel::MemoryStore::with_shards(1) });
}
