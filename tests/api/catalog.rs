//! Catalog endpoint tests.
