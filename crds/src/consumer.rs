use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ObjectStatusFields, SecretKeyRef, SecretRef};

/// A consumer of APIs and the credentials that identify it.
#[derive(
    CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default,
)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "ConsumerCredential",
    namespaced,
    status = "ConsumerCredentialStatus",
    shortname = "cc",
    category = "portcullis",
    printcolumn(name = "Consumer", type_ = "string", json_path = ".spec.consumer"),
    printcolumn(name = "Groups", type_ = "string", json_path = ".spec.groups"),
    printcolumn(
        name = "Credentials",
        type_ = "string",
        json_path = ".status.credentials"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Programmed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Programmed\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerCredentialSpec {
    /// Consumer name; defaults to `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<ApiKeyCredential>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt: Vec<JwtCredential>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsCredential>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oauth2_client_ids: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyCredential {
    /// Secret key holding the plaintext key; the key name defaults to `api-key`.
    pub secret_ref: SecretKeyRef,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct JwtCredential {
    pub key_id: String,
    pub algorithm: String,
    /// PEM public key for RS*/PS*/ES*/EdDSA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// HMAC secret for HS*; the key name defaults to `secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct MtlsCredential {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sans: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fingerprints_sha256: Vec<String>,
    /// The CA (`ca.crt` of this Secret, in the consumer's namespace) that must have issued
    /// the certificate: the identities above then match only a chain that verifies to one of
    /// its certificates, not one from another CA the route also trusts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretRef>,
}

/// Status of a ConsumerCredential: the shared fields plus a credential summary.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerCredentialStatus {
    #[serde(flatten)]
    pub common: ObjectStatusFields,
    /// e.g. `apiKey:2,jwt:1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
}
