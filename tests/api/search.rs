//! Customer search for operators: `GET /v1/tollgate/customers/search`.

use serde_json::{Value, json};

use super::spawn_app;

async fn create(app: &super::TestApp, name: &str, alias: &str) -> String {
    let (status, body) = app
        .post(
            "/v1/customers",
            json!({"name": name, "ingest_aliases": [alias]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"]["id"].as_str().unwrap().to_owned()
}

fn found(page: &Value) -> Vec<(String, String)> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["matched_on"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[actix_rt::test]
async fn customers_are_found_by_id_alias_or_name_exact_matches_first() {
    let app = spawn_app().await;
    let acme = create(&app, "Acme Corp", "acme-prod").await;
    create(&app, "ACME labs", "labs-1").await;
    create(&app, "Globex", "globex-acme-mirror").await;
    let initech = create(&app, "Initech", "acme-prod-2").await;

    let app = &app;
    let search = |q: &str| {
        let path = format!("/v1/tollgate/customers/search?q={q}");
        async move {
            let (status, page) = app.get(&path).await;
            assert_eq!(status, 200, "{page}");
            page
        }
    };
    // By id: exactly that customer.
    assert_eq!(
        found(&search(&acme).await),
        [("Acme Corp".into(), "id".into())]
    );
    // By exact alias first, then what contains it.
    let page = search("acme-prod").await;
    assert_eq!(found(&page)[0], ("Acme Corp".into(), "alias".into()));
    assert_eq!(found(&page).len(), 2, "{page}");
    assert!(found(&page).contains(&("Initech".into(), "alias".into())));
    // By name or alias, case-insensitively; every match once.
    let mut names = found(&search("aCmE").await);
    names.sort();
    assert_eq!(
        names,
        [
            ("ACME labs".to_owned(), "name".to_owned()),
            ("Acme Corp".into(), "name".into()),
            ("Globex".into(), "alias".into()),
            ("Initech".into(), "alias".into()),
        ]
    );
    assert_eq!(search("nobody").await["data"], json!([]));
    assert_eq!(search("nobody").await["next_page"], Value::Null);

    // Pages: one at a time until next_page is null, every match once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = app
            .get(&format!(
                "/v1/tollgate/customers/search?q=acme&limit=1&next_page={cursor}"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        seen.extend(found(&page));
        match page["next_page"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
        assert!(seen.len() <= 4, "paging does not end: {seen:?}");
    }
    assert_eq!(seen.len(), 4, "{seen:?}");

    // An exact match that fills the first page on its own: the next page goes on to the scan.
    let (_, first) = app
        .get("/v1/tollgate/customers/search?q=acme-prod&limit=1")
        .await;
    assert_eq!(found(&first), [("Acme Corp".into(), "alias".into())]);
    let cursor = first["next_page"]
        .as_str()
        .expect("the scan is still to come");
    let (_, second) = app
        .get(&format!(
            "/v1/tollgate/customers/search?q=acme-prod&limit=1&next_page={cursor}"
        ))
        .await;
    assert_eq!(found(&second), [("Initech".into(), "alias".into())]);

    // Archived customers only when asked.
    let (status, _) = app
        .post("/v1/customers/archive", json!({"id": initech}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(found(&search("initech").await), []);
    let (_, page) = app
        .get("/v1/tollgate/customers/search?q=initech&include_archived=true")
        .await;
    assert_eq!(found(&page), [("Initech".into(), "name".into())]);

    for bad in [
        "",
        "?q=",
        "?q=%20acme",
        "?q=a%00b",
        "?q=acme&next_page=nope",
        "?q=acme&limit=0",
    ] {
        let (status, body) = app
            .get(&format!("/v1/tollgate/customers/search{bad}"))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["message"].is_string());
    }
}
