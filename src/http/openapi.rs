//! Routes and their documentation in one place: every endpoint is registered through
//! [`Routes`], which also records its operationId, summary, request type (query parameters or
//! JSON body) and response type. `GET /openapi.json` is that record turned into an OpenAPI
//! document whose schemas come from the request and response types themselves (utoipa's
//! `ToSchema` and `IntoParams` derives), so a route cannot be served undocumented and a field
//! cannot be read without being described.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use actix_web::dev::Handler;
use actix_web::{FromRequest, HttpResponse, Responder, web};
use serde_json::{Map, Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::schema::Schema;
use utoipa::{IntoParams, ToSchema};

/// The schemas an operation references, by name.
pub type Schemas = Vec<(String, RefOr<Schema>)>;

/// The HTTP methods Tollgate serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
        }
    }

    fn http(self) -> actix_web::http::Method {
        match self {
            Method::Get => actix_web::http::Method::GET,
            Method::Post => actix_web::http::Method::POST,
        }
    }
}

/// One served route and what the document says about it.
pub struct Operation {
    pub method: Method,
    pub path: String,
    pub operation_id: &'static str,
    pub summary: &'static str,
    /// A JSON body's schema (POST).
    body: Option<fn(&mut Schemas) -> Value>,
    /// Query parameters (GET).
    query: Option<fn() -> Vec<Value>>,
    answer: Option<fn(&mut Schemas) -> Value>,
    /// Served without a token (probes).
    pub public: bool,
}

impl Operation {
    /// The JSON request body, `T`'s schema.
    pub fn body<T: ToSchema>(&mut self) -> &mut Self {
        self.body = Some(reference::<T>);
        self
    }

    /// A JSON array of `T` as the request body (ingest).
    pub fn body_list<T: ToSchema>(&mut self) -> &mut Self {
        self.body = Some(|schemas| json!({"type": "array", "items": reference::<T>(schemas)}));
        self
    }

    /// Query parameters, from `Q`'s fields.
    pub fn query<Q: IntoParams>(&mut self) -> &mut Self {
        self.query = Some(|| {
            Q::into_params(|| Some(ParameterIn::Query))
                .into_iter()
                .map(|p| serde_json::to_value(p).expect("a parameter serializes"))
                .collect()
        });
        self
    }

    /// The 200 answer.
    pub fn answers<A: Answer>(&mut self) -> &mut Self {
        self.answer = Some(A::response);
        self
    }

    /// Served without a token.
    pub fn public(&mut self) -> &mut Self {
        self.public = true;
        self
    }

    pub fn has_body(&self) -> bool {
        self.body.is_some()
    }

    pub fn has_answer(&self) -> bool {
        self.answer.is_some()
    }
}

/// Registers routes on the app (when there is one) and records them for the document.
pub struct Routes<'a> {
    app: Option<&'a mut web::ServiceConfig>,
    operations: Vec<Operation>,
}

impl<'a> Routes<'a> {
    pub fn new(app: Option<&'a mut web::ServiceConfig>) -> Routes<'a> {
        Routes {
            app,
            operations: Vec::new(),
        }
    }

    pub fn get<F, Args>(
        &mut self,
        path: &str,
        id: &'static str,
        summary: &'static str,
        handler: F,
    ) -> &mut Operation
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.add(Method::Get, path, id, summary, handler)
    }

    pub fn post<F, Args>(
        &mut self,
        path: &str,
        id: &'static str,
        summary: &'static str,
        handler: F,
    ) -> &mut Operation
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.add(Method::Post, path, id, summary, handler)
    }

    fn add<F, Args>(
        &mut self,
        method: Method,
        path: &str,
        operation_id: &'static str,
        summary: &'static str,
        handler: F,
    ) -> &mut Operation
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        if let Some(app) = self.app.as_deref_mut() {
            let route = match method {
                Method::Get => web::get(),
                Method::Post => web::post(),
            };
            app.route(path, route.to(handler));
        }
        self.operations.push(Operation {
            method,
            path: path.to_owned(),
            operation_id,
            summary,
            body: None,
            query: None,
            answer: None,
            public: false,
        });
        self.operations.last_mut().expect("just pushed")
    }

    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }
}

/// What a 200 carries.
pub trait Answer {
    fn response(schemas: &mut Schemas) -> Value;
}

/// `{"data": T}`.
pub struct Data<T>(std::marker::PhantomData<T>);
/// `{"data": [T], "next_page": cursor | null}`.
pub struct Page<T>(std::marker::PhantomData<T>);
/// `{"data": [T]}`, the whole list (Metronome's unpaginated lists).
pub struct List<T>(std::marker::PhantomData<T>);
/// An empty body.
pub struct Empty;
/// `T` itself, without an envelope (the probes).
pub struct Bare<T>(std::marker::PhantomData<T>);

impl<T: ToSchema> Answer for Bare<T> {
    fn response(schemas: &mut Schemas) -> Value {
        json_content(reference::<T>(schemas))
    }
}
/// `text/plain` (probes, Prometheus).
pub struct Plain;
/// An OpenAPI document.
pub struct Document;

impl Answer for Document {
    fn response(_: &mut Schemas) -> Value {
        json_content(json!({"type": "object", "description": "An OpenAPI 3.1 document"}))
    }
}

fn json_content(schema: Value) -> Value {
    json!({"description": "OK", "content": {"application/json": {"schema": schema}}})
}

impl<T: ToSchema> Answer for Data<T> {
    fn response(schemas: &mut Schemas) -> Value {
        json_content(json!({
            "type": "object", "required": ["data"],
            "properties": {"data": reference::<T>(schemas)},
        }))
    }
}

impl<T: ToSchema> Answer for List<T> {
    fn response(schemas: &mut Schemas) -> Value {
        json_content(json!({
            "type": "object", "required": ["data"],
            "properties": {"data": {"type": "array", "items": reference::<T>(schemas)}},
        }))
    }
}

impl<T: ToSchema> Answer for Page<T> {
    fn response(schemas: &mut Schemas) -> Value {
        json_content(json!({
            "type": "object", "required": ["data", "next_page"],
            "properties": {
                "data": {"type": "array", "items": reference::<T>(schemas)},
                "next_page": {"type": ["string", "null"], "description": "The cursor of the next page; null on the last."},
            },
        }))
    }
}

impl Answer for Empty {
    fn response(_: &mut Schemas) -> Value {
        json!({"description": "OK, with an empty body"})
    }
}

impl Answer for Plain {
    fn response(_: &mut Schemas) -> Value {
        json!({"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}})
    }
}

/// A `$ref` to `T`'s schema, collecting it and every schema it references.
fn reference<T: ToSchema>(schemas: &mut Schemas) -> Value {
    schemas.push((T::name().into_owned(), T::schema()));
    T::schemas(schemas);
    json!({"$ref": format!("#/components/schemas/{}", T::name())})
}

/// Every route Tollgate serves, as recorded by the modules (the Stripe webhook only when
/// `[payments.stripe]` configures its path).
pub fn served(stripe_webhook_path: Option<&str>) -> Vec<Operation> {
    let mut routes = Routes::new(None);
    super::register(&mut routes, stripe_webhook_path);
    routes.operations
}

pub fn routes(routes: &mut Routes<'_>) {
    routes
        .get("/openapi.json", "getOpenApi", "This document", openapi)
        .answers::<Document>()
        .public();
}

/// The OpenAPI 3.1 document of every route (without the Stripe webhook, whose path is
/// configured).
pub fn document() -> Value {
    let mut schemas: Schemas = Vec::new();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for operation in served(None) {
        let mut parameters: Vec<Value> = operation
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if let Some(query) = operation.query {
            parameters.extend(query());
        }
        let mut responses = Map::new();
        if let Some(answer) = operation.answer {
            responses.insert("200".into(), answer(&mut schemas));
        }
        let errors: &[&str] = if operation.public {
            &["503"]
        } else {
            &[
                "400", "401", "403", "404", "409", "413", "429", "500", "502", "503",
            ]
        };
        for status in errors {
            responses.insert(
                (*status).into(),
                json!({"$ref": "#/components/responses/Error"}),
            );
        }
        let mut entry = json!({
            "operationId": operation.operation_id,
            "summary": operation.summary,
            "responses": responses,
        });
        if operation.public {
            entry["security"] = json!([]);
        } else {
            entry["x-tollgate-scope"] = json!(
                super::auth::required_scope(&operation.method.http(), &operation.path).name()
            );
        }
        if operation.method == Method::Post {
            parameters.push(json!({
                "name": "Idempotency-Key", "in": "header", "required": false,
                "description": "Answers a retry with the first answer for 24 h (SPEC 2.1).",
                "schema": {"type": "string", "maxLength": 255},
            }));
        }
        if let Some(body) = operation.body {
            // An empty body reads as `{}`.
            entry["requestBody"] = json!({
                "required": false,
                "content": {"application/json": {"schema": body(&mut schemas)}},
            });
        }
        if !parameters.is_empty() {
            entry["parameters"] = json!(parameters);
        }
        paths
            .entry(operation.path.clone())
            .or_default()
            .insert(operation.method.name().into(), entry);
    }
    let mut components = Map::new();
    components.insert(
        "Error".into(),
        json!({"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}}),
    );
    for (name, schema) in schemas {
        components.insert(
            name,
            serde_json::to_value(schema).expect("a schema serializes"),
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tollgate",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Threshold billing and auto-recharge with payment-gated commits; the Metronome-compatible subset of the API, and Tollgate's operator API under /v1/tollgate/.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": components,
            "responses": {
                "Error": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        },
    })
}

async fn openapi() -> HttpResponse {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    HttpResponse::Ok().json(DOCUMENT.get_or_init(document))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_route_is_documented_with_its_types_and_a_unique_operation_id() {
        let served = served(Some("/v1/stripe/webhook"));
        let mut ids = std::collections::HashSet::new();
        for operation in &served {
            let route = format!("{} {}", operation.method.name(), operation.path);
            assert!(
                ids.insert(operation.operation_id),
                "{route}: operationId repeated"
            );
            assert!(operation.has_answer(), "{route} documents no response type");
            assert!(!operation.summary.is_empty(), "{route} has no summary");
            if operation.method == Method::Post {
                assert!(operation.has_body(), "{route} documents no request type");
            }
        }
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        for operation in served.iter().filter(|o| o.path != "/v1/stripe/webhook") {
            let entry = &paths[&operation.path][operation.method.name()];
            assert_eq!(entry["operationId"], operation.operation_id);
        }
        // Every reference resolves.
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for reference in text.split("\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(
                schemas.contains_key(name),
                "{name} is referenced but not defined"
            );
        }
    }
}
