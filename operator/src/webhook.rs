//! Validating admission webhook: `kubectl apply` of an invalid object fails at once with the
//! field and the reason, because the webhook runs the compiler's own checks.
//!
//! Only objects the compiler calls `Invalid` are refused. Missing references are admitted
//! (objects are often applied in any order) and conflicts depend on other objects; both show
//! up as conditions instead. Features this version does not enforce are admitted with a
//! warning and refused by the compiler, visibly, in the status.

use std::sync::Arc;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::DynamicObject;
use kube::Client;
use portcullis_compiler::manifests::parse_into;
use portcullis_compiler::{compile, Reason, Snapshot};
use serde_json::json;

use crate::watch::Stores;

pub const WEBHOOK_CONFIG_NAME: &str = "portcullis-validation";
pub const CERT_SECRET_NAME: &str = "portcullis-webhook-cert";
pub const PATH: &str = "/validate";

/// Admission verdict for one object.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub message: String,
    pub warnings: Vec<String>,
}

/// Checks one object (as JSON) with the compiler, against the policies and Secrets of its
/// namespace so that references resolve as they would in the cluster.
pub fn validate(object: &serde_json::Value, namespace: &str, stores: Option<&Stores>) -> Verdict {
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.insert("namespace".into(), json!(namespace));
        // The generated name is not known yet on create with generateName.
        if !meta.contains_key("name") {
            meta.insert("name".into(), json!("pending-name"));
        }
    }
    let mut snapshot = Snapshot {
        now_unix_secs: Some(portcullis_compiler::unix_now()),
        ..Snapshot::default()
    };
    let text = object.to_string();
    let errors = parse_into(&mut snapshot, "object", &text);
    if let Some(error) = errors.first() {
        return Verdict {
            allowed: false,
            message: error.message.clone(),
            warnings: Vec::new(),
        };
    }
    if let Some(stores) = stores {
        let same_ns = |ns: Option<&String>| ns.map(String::as_str) == Some(namespace);
        snapshot.rate_limit_policies.extend(
            stores
                .rate_limits
                .state()
                .into_iter()
                .filter(|p| same_ns(p.metadata.namespace.as_ref())),
        );
        snapshot.waf_policies.extend(
            stores
                .wafs
                .state()
                .into_iter()
                .filter(|p| same_ns(p.metadata.namespace.as_ref())),
        );
        snapshot.secrets.extend(
            stores
                .secrets
                .state()
                .into_iter()
                .filter(|s| same_ns(s.metadata.namespace.as_ref())),
        );
    }
    let name = object
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or_default();
    let kind = object
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default();
    let (_, statuses) = compile(&snapshot);
    let Some(status) = statuses
        .iter()
        .find(|s| s.name == name && s.namespace == namespace && s.kind.as_str() == kind)
    else {
        return Verdict {
            allowed: true,
            message: String::new(),
            warnings: Vec::new(),
        };
    };
    let Some(accepted) = status.condition("Accepted") else {
        return Verdict {
            allowed: true,
            message: String::new(),
            warnings: Vec::new(),
        };
    };
    match (accepted.status, accepted.reason) {
        (true, _) => Verdict {
            allowed: true,
            message: String::new(),
            warnings: Vec::new(),
        },
        (false, Reason::Invalid) => Verdict {
            allowed: false,
            message: format!("{kind} {namespace}/{name} is invalid: {}", accepted.message),
            warnings: Vec::new(),
        },
        (false, _) => Verdict {
            allowed: true,
            message: String::new(),
            warnings: vec![format!(
                "{kind} {namespace}/{name} will not be served: {}",
                accepted.message
            )],
        },
    }
}

/// Answers one AdmissionReview body.
pub fn review(body: &[u8], stores: Option<&Stores>) -> serde_json::Value {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
        Ok(review) => review,
        Err(e) => return undecodable(body, &e),
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(e) => return json!(AdmissionResponse::invalid(e.to_string()).into_review()),
    };
    let mut response = AdmissionResponse::from(&request);
    if let Some(object) = &request.object {
        let value = serde_json::to_value(object).unwrap_or_default();
        let namespace = request
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let verdict = validate(&value, &namespace, stores);
        if !verdict.allowed {
            response = response.deny(verdict.message);
        } else if !verdict.warnings.is_empty() {
            response.warnings = Some(verdict.warnings);
        }
    }
    json!(response.into_review())
}

/// The answer to a review whose object cannot be decoded (nested past serde_json's limit, a
/// value its type cannot hold): refused, under the request's uid, read without decoding
/// the object, so the API server takes the answer instead of calling it a webhook failure.
fn undecodable(body: &[u8], error: &serde_json::Error) -> serde_json::Value {
    #[derive(serde::Deserialize)]
    struct Shallow {
        request: Option<ShallowRequest>,
    }
    #[derive(serde::Deserialize)]
    struct ShallowRequest {
        uid: String,
    }
    match serde_json::from_slice::<Shallow>(body) {
        Ok(Shallow {
            request: Some(request),
        }) => json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": request.uid,
                "allowed": false,
                "status": {
                    "code": 400,
                    "reason": "Invalid",
                    "message": format!(
                        "the object cannot be decoded (JSON nested deeper than {} levels is refused in specs): {error}",
                        portcullis_compiler::tenancy::MAX_JSON_DEPTH
                    ),
                },
            },
        }),
        _ => {
            json!(AdmissionResponse::invalid(format!("bad AdmissionReview: {error}")).into_review())
        }
    }
}

/// The webhook's serving certificate: a self-signed CA-less certificate kept in a Secret so
/// that every operator replica serves the same one.
pub struct ServingCert {
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("generating the webhook certificate: {0}")]
    Cert(String),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

fn generate(hosts: &[String]) -> Result<ServingCert, WebhookError> {
    let key = rcgen::KeyPair::generate().map_err(|e| WebhookError::Cert(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec())
        .map_err(|e| WebhookError::Cert(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis-webhook");
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    let cert = params
        .self_signed(&key)
        .map_err(|e| WebhookError::Cert(e.to_string()))?;
    Ok(ServingCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Reads the shared serving certificate, creating it on first use.
pub async fn serving_cert(
    client: &Client,
    namespace: &str,
    hosts: &[String],
    owner: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> Result<ServingCert, WebhookError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..3 {
        if let Some(secret) = api.get_opt(CERT_SECRET_NAME).await? {
            let data = secret.data.unwrap_or_default();
            let text = |k: &str| {
                data.get(k)
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            };
            if let (Some(cert_pem), Some(key_pem)) = (text("tls.crt"), text("tls.key")) {
                return Ok(ServingCert { cert_pem, key_pem });
            }
        }
        let generated = generate(hosts)?;
        let mut secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(CERT_SECRET_NAME.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(
                [
                    (
                        "tls.crt".to_string(),
                        ByteString(generated.cert_pem.clone().into_bytes()),
                    ),
                    (
                        "tls.key".to_string(),
                        ByteString(generated.key_pem.clone().into_bytes()),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        };
        crate::owner::attach(&mut secret.metadata, owner);
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => return Ok(generated),
            // Another replica won the race: read theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(WebhookError::Cert(
        "could not create or read the certificate Secret".into(),
    ))
}

/// Where the API server reaches the webhook.
pub enum Endpoint {
    Url(String),
    Service {
        namespace: String,
        name: String,
        port: i32,
    },
}

/// Registers (server-side apply) the ValidatingWebhookConfiguration for the four kinds.
pub async fn register(
    client: &Client,
    endpoint: &Endpoint,
    ca_pem: &str,
    fail_closed: bool,
) -> Result<(), WebhookError> {
    use base64::Engine;
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let client_config = match endpoint {
        Endpoint::Url(url) => json!({"url": format!("{url}{PATH}"), "caBundle": ca_bundle}),
        Endpoint::Service {
            namespace,
            name,
            port,
        } => json!({
            "service": {"namespace": namespace, "name": name, "port": port, "path": PATH},
            "caBundle": ca_bundle,
        }),
    };
    let config = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIG_NAME},
        "webhooks": [{
            "name": "validate.portcullis.dev",
            "clientConfig": client_config,
            "rules": [{
                "apiGroups": [portcullis_crds::GROUP],
                "apiVersions": [portcullis_crds::VERSION],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["apiroutes", "consumercredentials", "ratelimitpolicies", "wafpolicies"],
                "scope": "Namespaced",
            }],
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "timeoutSeconds": 5,
            "failurePolicy": if fail_closed { "Fail" } else { "Ignore" },
        }],
    });
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    api.patch(
        WEBHOOK_CONFIG_NAME,
        &PatchParams::apply(crate::publish::FIELD_MANAGER).force(),
        &Patch::Apply(&config),
    )
    .await?;
    Ok(())
}

/// Shared state of the webhook server.
pub struct WebhookState {
    pub stores: Stores,
}

pub type SharedWebhook = Arc<WebhookState>;

#[cfg(test)]
mod tests {
    use super::*;

    fn route(spec: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "ApiRoute", "metadata": {"name": "r"}, "spec": spec})
    }

    #[test]
    fn invalid_objects_are_refused_with_field_and_reason() {
        let verdict = validate(
            &route(
                json!({"paths": [{"type": "Regex", "value": "/("}], "upstream": {"targets": [{"url": "http://a:1"}]}}),
            ),
            "shop",
            None,
        );
        assert!(!verdict.allowed);
        assert!(
            verdict.message.contains("spec.paths[0].value"),
            "{}",
            verdict.message
        );
        assert!(
            verdict.message.contains("ApiRoute shop/r"),
            "{}",
            verdict.message
        );
    }

    #[test]
    fn objects_too_deep_to_decode_are_refused_under_the_request_uid() {
        let mut schema = json!(1);
        for _ in 0..130 {
            schema = json!({ "a": schema });
        }
        let object = route(
            json!({"paths": [{"value": "/"}], "requestValidation": {"jsonSchema": schema},
                                  "upstream": {"directResponse": {"status": 200}}}),
        );
        let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                          "request": {"uid": "u-1", "kind": {"group": "portcullis.dev", "version": "v1alpha1", "kind": "ApiRoute"},
                                      "resource": {"group": "portcullis.dev", "version": "v1alpha1", "resource": "apiroutes"},
                                      "operation": "CREATE", "namespace": "shop", "name": "r",
                                      "userInfo": {}, "object": object}});
        let answer = review(&serde_json::to_vec(&body).unwrap_or_default(), None);
        assert_eq!(answer["response"]["uid"], "u-1", "{answer}");
        assert_eq!(answer["response"]["allowed"], false, "{answer}");
        // Deep, but within the decoder's limit: the compiler's depth limit refuses it.
        let mut schema = json!(1);
        for _ in 0..40 {
            schema = json!({ "a": schema });
        }
        let verdict = validate(
            &route(
                json!({"paths": [{"value": "/"}], "requestValidation": {"jsonSchema": schema},
                          "upstream": {"directResponse": {"status": 200}}}),
            ),
            "shop",
            None,
        );
        assert!(
            !verdict.allowed && verdict.message.contains("levels deep"),
            "{verdict:?}"
        );
    }

    #[test]
    fn missing_references_are_admitted_and_unsupported_features_warned() {
        let verdict = validate(
            &route(
                json!({"paths": [{"value": "/"}], "wafPolicy": "later", "upstream": {"targets": [{"url": "http://a:1"}]}}),
            ),
            "shop",
            None,
        );
        assert!(verdict.allowed, "{verdict:?}");
        let verdict = validate(
            &route(
                json!({"paths": [{"value": "/"}], "tls": {"secretName": "x"}, "upstream": {"targets": [{"url": "http://a:1"}]}}),
            ),
            "shop",
            None,
        );
        assert!(
            verdict.allowed && !verdict.warnings.is_empty(),
            "{verdict:?}"
        );
        let verdict = validate(
            &route(json!({"paths": "nope", "upstream": {}})),
            "shop",
            None,
        );
        assert!(!verdict.allowed);
    }
}
