//! The web console over HTTP, through `lockstep up`: signing in and out with a token, the
//! session cookie's flags, the environment tree, an activity's timeline and log, the refusal of
//! a form posted without the session's CSRF token, and what a viewer may see.

mod support;

use support::*;

/// A browser-like client that follows no redirect, so that each answer can be checked.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A form posted as a browser does; the values are tokens, which need no escaping.
async fn post_form(
    platform: &Platform,
    path: &str,
    cookie: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    browser()
        .post(format!("{}{path}", platform.api))
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.join("&"))
        .send()
        .await
        .unwrap()
}

/// Signs in with `token`: the session cookie (`name=value`).
async fn sign_in(platform: &Platform, token: &str) -> String {
    let answer = post_form(platform, "/sign-in", "", &[("token", token)]).await;
    assert_eq!(answer.status(), 303);
    let cookie = answer.headers()["set-cookie"].to_str().unwrap().to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    cookie.split(';').next().unwrap().to_owned()
}

async fn get(platform: &Platform, cookie: &str, path: &str) -> (u16, String) {
    let answer = browser()
        .get(format!("{}{path}", platform.api))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (answer.status().as_u16(), answer.text().await.unwrap())
}

/// The CSRF token of the page's forms.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..at + page[at..].find('"').unwrap()].to_owned()
}

#[tokio::test]
async fn a_user_signs_in_sees_the_tree_and_an_activity_and_forms_need_the_sessions_token() {
    let platform = Platform::start().await;
    let project = Project::sample();
    for branch in ["production", "feature-x"] {
        let pushed = platform.push(&project, &format!("HEAD:{branch}"));
        assert!(pushed.status.success(), "{}", text(&pushed));
    }

    // Signed out, every page sends to the sign-in page; a wrong token is refused.
    let (status, _) = get(&platform, "", "/").await;
    assert_eq!(status, 303);
    let wrong = post_form(&platform, "/sign-in", "", &[("token", "not-a-token")]).await;
    assert_eq!(wrong.status(), 401);
    assert!(
        wrong
            .text()
            .await
            .unwrap()
            .contains("No user has this token")
    );

    let cookie = sign_in(&platform, &platform.token).await;
    let (status, tree) = get(&platform, &cookie, "/").await;
    assert_eq!(status, 200, "{tree}");
    let production = tree.find("<strong>production</strong>").expect(&tree);
    let feature = tree.find("<strong>feature-x</strong>").expect(&tree);
    assert!(production < feature, "the child after its parent");
    assert!(tree.contains("depth-1"), "the child one level down: {tree}");
    let listed = platform.get("/activities").await;
    let pushed = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["environment"] == "production" && a["type"] == "push")
        .expect("production's push");
    let release = pushed["image"].as_str().unwrap();
    assert!(tree.contains(&release[..12]), "the release served: {tree}");
    for node in [
        "production-1",
        "production-2",
        "production-3",
        "development-1",
    ] {
        assert!(tree.contains(node), "{node} in {tree}");
    }
    assert!(tree.contains("state-open"), "{tree}");

    // The production push's activity: every phase on the timeline, the closed window, the log.
    let activity = platform.latest_activity().await;
    let (status, feed) = get(&platform, &cookie, "/activities").await;
    assert_eq!(status, 200);
    assert!(
        feed.contains(activity["description"].as_str().unwrap()),
        "{feed}"
    );
    let id = pushed["id"].as_str().unwrap();
    let (status, page) = get(&platform, &cookie, &format!("/activities/{id}")).await;
    assert_eq!(status, 200, "{page}");
    for phase in TIMELINE_PHASES {
        assert!(
            page.contains(&format!(">{phase}</text>")),
            "{phase} in {page}"
        );
    }
    assert!(page.contains("closed window"), "{page}");
    let log = platform.get_text(&format!("/activities/{id}/log")).await;
    let last_line = log.lines().last().unwrap().to_owned();
    assert!(page.contains(&escape(&last_line)), "{last_line} in {page}");

    // The finished activity's log as events: every line, then the end.
    let (status, events) = get(&platform, &cookie, &format!("/activities/{id}/log")).await;
    assert_eq!(status, 200);
    assert!(events.contains(&format!("data: {last_line}\n")), "{events}");
    assert!(events.ends_with("event: end\ndata: \n\n"), "{events}");

    // A form without the session's CSRF token is refused, and changes nothing.
    let forged = post_form(&platform, "/sign-out", &cookie, &[("csrf", "forged")]).await;
    assert_eq!(forged.status(), 403);
    assert_eq!(get(&platform, &cookie, "/").await.0, 200);
    let signed_out = post_form(
        &platform,
        "/sign-out",
        &cookie,
        &[("csrf", &csrf_of(&tree))],
    )
    .await;
    assert_eq!(signed_out.status(), 303);
    assert_eq!(
        get(&platform, &cookie, "/").await.0,
        303,
        "the session is over"
    );

    // A viewer of development environments sees those alone.
    let viewer = platform.add_user("viewer@example.com", &["--role", "development:viewer"]);
    let cookie = sign_in(&platform, &viewer).await;
    let (_, tree) = get(&platform, &cookie, "/").await;
    assert!(tree.contains("<strong>feature-x</strong>"), "{tree}");
    assert!(!tree.contains("<strong>production</strong>"), "{tree}");
    let (status, _) = get(&platform, &cookie, &format!("/activities/{id}")).await;
    assert_eq!(status, 403, "production's activity");
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[tokio::test]
async fn actions_variables_and_users_go_through_the_apis_checks_and_sensitive_values_stay_hidden() {
    let platform = Platform::start().await;
    let project = Project::sample();
    let pushed = platform.push(&project, "HEAD:production");
    assert!(pushed.status.success(), "{}", text(&pushed));
    let cookie = sign_in(&platform, &platform.token).await;

    // A redeploy: offered on the environment's page, confirmed, then its activity.
    let (status, production) = get(&platform, &cookie, "/environments/production").await;
    assert_eq!(status, 200, "{production}");
    assert!(
        production.contains("href=\"/environments/production/redeploy\""),
        "{production}"
    );
    let (status, confirm) = get(&platform, &cookie, "/environments/production/redeploy").await;
    assert_eq!(status, 200);
    assert!(confirm.contains("Redeploy production?"), "{confirm}");
    let before = platform.latest_activity().await["id"].clone();
    let forged = post_form(
        &platform,
        "/environments/production/redeploy",
        &cookie,
        &[("csrf", "x")],
    )
    .await;
    assert_eq!(forged.status(), 403);
    assert_eq!(
        platform.latest_activity().await["id"],
        before,
        "a forged form starts nothing"
    );
    let redeployed = post_form(
        &platform,
        "/environments/production/redeploy",
        &cookie,
        &[("csrf", &csrf_of(&confirm))],
    )
    .await;
    assert_eq!(redeployed.status(), 303);
    let activity = platform.latest_activity().await;
    assert_ne!(activity["id"], before);
    assert_eq!(activity["type"], "deploy");
    assert_eq!(
        redeployed.headers()["location"],
        format!("/activities/{}", activity["id"].as_str().unwrap())
    );

    // A sensitive variable set in the console is never shown again, on any page.
    let secret = "s3cr3t-value-0123456789";
    let (_, variables) = get(&platform, &cookie, "/variables").await;
    let set = post_form(
        &platform,
        "/variables",
        &cookie,
        &[
            ("csrf", &csrf_of(&variables)),
            ("name", "env:API_KEY"),
            ("value", secret),
            ("sensitive", "true"),
        ],
    )
    .await;
    assert_eq!(set.status(), 303);
    let (_, variables) = get(&platform, &cookie, "/variables").await;
    assert!(variables.contains("env:API_KEY"), "{variables}");
    assert!(variables.contains("sensitive: not shown"), "{variables}");
    for path in ["/", "/variables", "/environments/production", "/activities"] {
        let (_, page) = get(&platform, &cookie, path).await;
        assert!(!page.contains(secret), "the secret in {path}");
    }

    // Users: a project admin adds one, whose token is shown once; that user, a viewer of
    // production, sees no form to change variables and no user page.
    let (_, users) = get(&platform, &cookie, "/users").await;
    let added = post_form(
        &platform,
        "/users",
        &cookie,
        &[
            ("csrf", &csrf_of(&users)),
            ("email", "viewer@example.com"),
            ("production", "viewer"),
            ("staging", "none"),
            ("development", "none"),
        ],
    )
    .await;
    assert_eq!(added.status(), 200);
    let shown = added.text().await.unwrap();
    let token = shown
        .split("<code class=\"token\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect(&shown)
        .to_owned();
    let viewer = sign_in(&platform, &token).await;
    let (status, variables) = get(&platform, &viewer, "/variables?environment=production").await;
    assert_eq!(status, 200, "{variables}");
    assert!(!variables.contains("Set a variable"), "{variables}");
    assert!(!variables.contains("/variables/delete"), "{variables}");
    let (_, production) = get(&platform, &viewer, "/environments/production").await;
    assert!(
        !production.contains("/environments/production/redeploy"),
        "{production}"
    );
    assert_eq!(get(&platform, &viewer, "/users").await.0, 403);
    let refused = post_form(
        &platform,
        "/environments/production/redeploy",
        &viewer,
        &[("csrf", &csrf_of(&production))],
    )
    .await;
    assert_eq!(
        refused.status(),
        403,
        "the API's check refuses a viewer's redeploy"
    );
}
