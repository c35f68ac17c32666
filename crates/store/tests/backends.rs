//! Backend conformance (issue 3, done-when 5): the same suite against a local directory, S3 on
//! a real moto server and Azure Blob on a real Azurite server, both on 127.0.0.1 and started per
//! test; plus each backend's error paths (missing bucket or container, rejected credentials,
//! bad options). GCS has no emulator that works here: its URLs and error paths are tested
//! without a server.
//!
//! Needs `$M365BK_TEST_MOTO_SERVER`, `$M365BK_TEST_AZURITE` (scripts/test.sh sets them, after
//! scripts/test-servers.sh installs the servers) and `$M365BK_TEST_CORPUS_SMALL`.

#[path = "backends/conformance.rs"]
mod conformance;
#[path = "support/servers.rs"]
mod servers;

use std::collections::BTreeMap;
use std::time::Duration;

use conformance::Target;
use m365bk_store::{
    Backend, BackendOptions, Encryption, Error, InitOptions, KdfParams, Location, Repository,
    RetryOptions, SecretString,
};
use servers::{install_crypto_provider, Server, AZURITE_ACCOUNT, AZURITE_KEY};

/// Few, quick retries: a test against a dead port fails in well under a second.
const TEST_RETRY: RetryOptions = RetryOptions {
    max_retries: 2,
    retry_timeout: Duration::from_secs(5),
};

fn options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A systemd-style credentials directory holding `files`.
fn credentials(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, value) in files {
        std::fs::write(dir.path().join(name), format!("{value}\n")).unwrap();
    }
    dir
}

fn s3_backend(server: &Server, creds: &tempfile::TempDir) -> BackendOptions {
    BackendOptions {
        options: options(&[
            ("endpoint", &server.endpoint),
            ("allow_http", "true"),
            ("region", "us-east-1"),
        ]),
        retry: TEST_RETRY,
        credentials_dir: Some(creds.path().to_path_buf()),
    }
}

fn moto_credentials() -> tempfile::TempDir {
    // moto accepts any key pair; these exercise the credential-file path.
    credentials(&[
        ("aws-access-key-id", "m365bk-test"),
        ("aws-secret-access-key", "m365bk-test-secret"),
    ])
}

fn azure_backend(server: &Server, creds: &tempfile::TempDir) -> BackendOptions {
    BackendOptions {
        options: options(&[
            ("account_name", AZURITE_ACCOUNT),
            ("endpoint", &server.azure_account_endpoint()),
            ("allow_http", "true"),
        ]),
        retry: TEST_RETRY,
        credentials_dir: Some(creds.path().to_path_buf()),
    }
}

fn test_init() -> InitOptions {
    InitOptions {
        encryption: Encryption::Passphrase(SecretString::from("x y z")),
        kdf: KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        },
        cipher: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target {
        name: "local",
        location: format!("file://{}", dir.path().display()),
        backend: BackendOptions::default(),
    };
    conformance::run(&target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_on_moto_passes_the_conformance_suite() {
    install_crypto_provider();
    let server = Server::moto();
    server.create_bucket("m365bk").await;
    let creds = moto_credentials();
    let target = Target {
        name: "s3 (moto)",
        location: "s3://m365bk/backups/tenant-a".into(),
        backend: s3_backend(&server, &creds),
    };
    conformance::run(&target).await;

    // The prefix kept everything under it: the bucket's root holds nothing else.
    let bucket_root = Target {
        name: "s3 root",
        location: "s3://m365bk".into(),
        backend: s3_backend(&server, &creds),
    };
    let listed = bucket_root
        .raw_store()
        .list_with_delimiter(None)
        .await
        .unwrap();
    assert!(listed.objects.is_empty(), "{:?}", listed.objects);
    let prefixes: Vec<String> = listed
        .common_prefixes
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(prefixes, vec!["backups".to_string()]);

    // A second repository in the same bucket under another prefix is independent.
    let other = Repository::init_with_backend(
        "s3://m365bk/backups/tenant-b",
        &s3_backend(&server, &creds),
        test_init(),
    )
    .await
    .unwrap();
    assert!(other.list_snapshots().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_on_azurite_passes_the_conformance_suite() {
    install_crypto_provider();
    let server = Server::azurite();
    server.create_container("m365bk").await;
    let creds = credentials(&[("azure-storage-account-key", AZURITE_KEY)]);
    let target = Target {
        name: "azure (azurite)",
        location: "az://m365bk/backups".into(),
        backend: azure_backend(&server, &creds),
    };
    conformance::run(&target).await;

    // azure:// names the same place as az://.
    let same = Repository::open_with_backend(
        "azure://m365bk/backups",
        &azure_backend(&server, &creds),
        Some(SecretString::from("conformance: four random words")),
    )
    .await
    .unwrap();
    assert_eq!(same.list_snapshots().await.unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_missing_bucket_and_unreachable_endpoint_are_named() {
    install_crypto_provider();
    let server = Server::moto();
    let creds = moto_credentials();
    let backend = s3_backend(&server, &creds);

    let err = Repository::init_with_backend("s3://no-such-bucket/repo", &backend, test_init())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ContainerNotFound { noun: "bucket", .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("\"no-such-bucket\"") && text.contains("aws s3 mb"),
        "{text}"
    );
    let err = Repository::open_with_backend("s3://no-such-bucket/repo", &backend, None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ContainerNotFound { .. }), "{err:?}");

    // An existing bucket without a repository: "run m365bk init".
    server.create_bucket("empty").await;
    let err = Repository::open_with_backend("s3://empty/repo", &backend, None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RepositoryNotFound { .. }), "{err:?}");

    // Nothing listening: a transient backend error after the configured retries, quickly.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut backend = backend.clone();
    backend
        .options
        .insert("endpoint".into(), format!("http://127.0.0.1:{dead}"));
    let started = std::time::Instant::now();
    let err = Repository::open_with_backend("s3://empty/repo", &backend, None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(err.is_transient(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "retries are bounded by the test's RetryOptions: took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_rejected_credentials_are_named() {
    install_crypto_provider();
    // Authentication starts after the readiness probe and the bucket creation; moto's IAM
    // knows no key then.
    let server = Server::moto_with_auth(2);
    server.create_bucket("m365bk").await;
    let creds = moto_credentials();
    let err =
        Repository::init_with_backend("s3://m365bk/r", &s3_backend(&server, &creds), test_init())
            .await
            .unwrap_err();
    assert!(matches!(err, Error::AccessDenied { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("AWS_ACCESS_KEY_ID") && text.contains("AWS_SECRET_ACCESS_KEY"),
        "{text}"
    );
    assert!(!err.is_transient());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_wrong_key_and_missing_container_are_named() {
    install_crypto_provider();
    let server = Server::azurite();
    server.create_container("m365bk").await;
    let good = credentials(&[("azure-storage-account-key", AZURITE_KEY)]);
    Repository::init_with_backend("az://m365bk/r", &azure_backend(&server, &good), test_init())
        .await
        .unwrap();

    // A well-formed key that is not the account's: Azurite answers 403.
    let wrong_key = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode([7u8; 64])
    };
    let wrong = credentials(&[("azure-storage-account-key", &wrong_key)]);
    let err = Repository::open_with_backend("az://m365bk/r", &azure_backend(&server, &wrong), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AccessDenied { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("AZURE_STORAGE_ACCOUNT_KEY"), "{text}");
    assert!(!err.is_transient());

    let err = Repository::open_with_backend("az://nothere/r", &azure_backend(&server, &good), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ContainerNotFound {
                noun: "container",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("az storage container create"),
        "{err}"
    );
}

#[tokio::test]
async fn gcs_locations_parse_and_fail_before_any_request() {
    // No GCS emulator works with object_store here: this covers parsing and the errors that
    // come before a request, not the GCS client itself.
    install_crypto_provider();
    let loc = Location::parse("gs://my-bucket/m365/prod").unwrap();
    assert_eq!(loc.backend(), Backend::Gcs);
    assert_eq!(loc.container(), Some("my-bucket"));
    assert_eq!(loc.prefix().unwrap().as_ref(), "m365/prod");

    let err = Location::parse("gs:///prefix").unwrap_err();
    assert!(matches!(err, Error::UnsupportedLocation { .. }), "{err}");
    assert!(err.to_string().contains("no bucket name"), "{err}");

    // A secret in the options is refused, naming the variable to use instead.
    let backend = BackendOptions {
        options: options(&[("service_account_key", "{}")]),
        ..Default::default()
    };
    let err = backend.check(&loc).unwrap_err();
    assert!(matches!(err, Error::BackendConfig { .. }), "{err}");
    assert!(
        err.to_string().contains("GOOGLE_SERVICE_ACCOUNT_KEY"),
        "{err}"
    );

    // A service-account key credential that is not JSON: the builder refuses it, no request.
    let creds = credentials(&[("google-service-account-key", "not json")]);
    let backend = BackendOptions {
        credentials_dir: Some(creds.path().to_path_buf()),
        ..Default::default()
    };
    let err = Repository::open_with_backend("gs://my-bucket/m365", &backend, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::BackendConfig {
                backend: Backend::Gcs,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("GOOGLE_SERVICE_ACCOUNT"), "{err}");
}
