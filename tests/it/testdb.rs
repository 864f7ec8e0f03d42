//! The throwaway-cluster path runs even when DATABASE_URL is set: a child process of
//! this test binary, without DATABASE_URL, must start its own cluster.

use std::process::Command;

use tally_testdb::TestDb;

#[tokio::test]
async fn each_test_database_is_fresh_and_dropped() {
    let db = TestDb::new().await.unwrap();
    let name = db.name().to_owned();
    assert_eq!(db.tally().verify().await.unwrap().events, 0);
    let admin = tally_testdb::admin_url().unwrap();
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    drop(db);
    let left = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap();
    assert!(left.is_none(), "database {name} left behind");
}

#[test]
fn throwaway_cluster_without_database_url() {
    if std::env::var("TALLY_IN_CHILD").is_ok() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([
            "--exact",
            "testdb::throwaway_cluster_child",
            "--nocapture",
            "--include-ignored",
        ])
        .env_remove("DATABASE_URL")
        .env("TALLY_IN_CHILD", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("CHILD-OK host=/"),
        "the child did not use a throwaway cluster: {text}"
    );
}

#[test]
#[ignore = "run by throwaway_cluster_without_database_url in a child process"]
fn throwaway_cluster_child() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert!(std::env::var("DATABASE_URL").is_err());
        let db = TestDb::new().await.unwrap();
        assert_eq!(db.tally().verify().await.unwrap().mismatches, 0);
        println!("CHILD-OK {}", tally_testdb::admin_url().unwrap());
    });
}
