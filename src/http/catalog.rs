//! Catalog endpoints: billable metrics, products, rate cards and rates (placeholder until built).

use actix_web::web;

pub fn routes(_cfg: &mut web::ServiceConfig) {}
