//! The store contract suite against the in-memory store.

idem_core::store_contract_tests!(async { idem_core::MemoryStore::new() });
idem_core::store_admin_contract_tests!(async { idem_core::MemoryStore::new() });
