//! Status of the Ingresses and Gateway API objects Portcullis serves, from the compiler's
//! verdict in each [`Plan`]:
//!
//! - Ingress: `status.loadBalancer` from the proxy Service, and an Event when it (or one of
//!   its paths) cannot be served, since an Ingress has no conditions;
//! - GatewayClass: `Accepted`; Gateway: `Accepted`, `Programmed`, addresses (the proxy
//!   Service's) and one entry per listener with its `attachedRoutes`; HTTPRoute: one
//!   `status.parents` entry per Gateway of ours, other controllers' entries left as they are.
//!
//! These objects are few next to ApiRoutes and consumers, so this writer is plain: after
//! each plan (and every [`RESYNC`]), compare and merge-patch what differs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Client, Resource};
use portcullis_compiler::config::ObjectKind;
use portcullis_compiler::GATEWAY_CONTROLLER;
use portcullis_compiler::{ConditionOut, ObjectStatus, Reason};
use portcullis_crds::gateway::{Gateway, GatewayClass, HTTPRoute, GATEWAY_GROUP};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::events::EventSink;
use crate::plan::Plan;
use crate::watch::Stores;

/// How often statuses are compared even without a new plan (the proxy Service's address
/// may have changed).
pub const RESYNC: Duration = Duration::from_secs(10);

pub struct GatewayStatusWriter {
    pub client: Client,
    pub stores: Stores,
    pub events: EventSink,
    /// Namespace and name of the proxies' Service, whose address Ingresses and Gateways get.
    pub proxy_service: (String, String),
    /// The last Event message per Ingress, so that each problem is told once.
    told: HashMap<(String, String), String>,
}

impl GatewayStatusWriter {
    pub fn new(
        client: Client,
        stores: Stores,
        events: EventSink,
        proxy_service: (String, String),
    ) -> Self {
        GatewayStatusWriter {
            client,
            stores,
            events,
            proxy_service,
            told: HashMap::new(),
        }
    }

    pub async fn run(mut self, mut plans: watch::Receiver<Option<Arc<Plan>>>) {
        loop {
            let plan = plans.borrow_and_update().clone();
            if let Some(plan) = plan {
                self.pass(&plan).await;
            }
            tokio::select! {
                changed = plans.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(RESYNC) => {}
            }
        }
    }

    async fn pass(&mut self, plan: &Plan) {
        let addresses = self.proxy_addresses().await;
        for status in plan.statuses.iter() {
            let result = match status.kind {
                ObjectKind::Ingress => self.ingress(status, &addresses).await,
                ObjectKind::GatewayClass => self.gateway_class(status).await,
                ObjectKind::Gateway => self.gateway(status, &addresses).await,
                ObjectKind::HttpRoute => self.http_route(status).await,
                _ => Ok(()),
            };
            if let Err(error) = result {
                tracing::warn!(
                    kind = status.kind.as_str(),
                    namespace = %status.namespace,
                    name = %status.name,
                    %error,
                    "cannot write status"
                );
            }
        }
    }

    /// The proxy Service's addresses: its load balancer's, else its external IPs, else its
    /// cluster IP. Empty when the Service does not exist.
    async fn proxy_addresses(&self) -> Vec<(bool, String)> {
        let (namespace, name) = &self.proxy_service;
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let Ok(Some(service)) = api.get_opt(name).await else {
            return Vec::new();
        };
        let mut out: Vec<(bool, String)> = Vec::new();
        for lb in service
            .status
            .iter()
            .filter_map(|s| s.load_balancer.as_ref())
            .flat_map(|lb| lb.ingress.iter().flatten())
        {
            if let Some(ip) = &lb.ip {
                out.push((true, ip.clone()));
            } else if let Some(host) = &lb.hostname {
                out.push((false, host.clone()));
            }
        }
        let spec = service.spec.unwrap_or_default();
        if out.is_empty() {
            out.extend(
                spec.external_ips
                    .iter()
                    .flatten()
                    .map(|ip| (true, ip.clone())),
            );
        }
        if out.is_empty() {
            out.extend(
                spec.cluster_ip
                    .filter(|ip| !ip.is_empty() && ip != "None")
                    .map(|ip| (true, ip)),
            );
        }
        out
    }

    async fn ingress(
        &mut self,
        status: &ObjectStatus,
        addresses: &[(bool, String)],
    ) -> kube::Result<()> {
        let key = (status.namespace.clone(), status.name.clone());
        let Some(ingress) = self
            .stores
            .ingresses
            .get(&kube::runtime::reflector::ObjectRef::new(&status.name).within(&status.namespace))
        else {
            return Ok(());
        };
        let problem = status
            .conditions
            .iter()
            .find(|c| !c.status)
            .map(|c| (c.reason.as_str(), c.message.clone()));
        let last = self.told.get(&key).cloned().unwrap_or_default();
        let now = problem.as_ref().map(|(_, m)| m.clone()).unwrap_or_default();
        if last != now {
            let event = match &problem {
                Some((reason, message)) => Event {
                    type_: EventType::Warning,
                    reason: (*reason).to_string(),
                    note: Some(truncate(message)),
                    action: "Compile".into(),
                    secondary: None,
                },
                None => Event {
                    type_: EventType::Normal,
                    reason: "Accepted".into(),
                    note: Some("served by Portcullis".into()),
                    action: "Compile".into(),
                    secondary: None,
                },
            };
            self.events.send(event, reference(&*ingress));
            self.told.insert(key, now);
        }
        let desired: Vec<Value> = addresses
            .iter()
            .map(|(ip, value)| {
                if *ip {
                    json!({"ip": value})
                } else {
                    json!({"hostname": value})
                }
            })
            .collect();
        let current = serde_json::to_value(
            ingress
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.clone())
                .unwrap_or_default(),
        )
        .unwrap_or(Value::Null);
        if current != Value::Array(desired.clone()) {
            let api: Api<Ingress> = Api::namespaced(self.client.clone(), &status.namespace);
            api.patch_status(
                &status.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": desired}}})),
            )
            .await?;
        }
        Ok(())
    }

    async fn gateway_class(&self, status: &ObjectStatus) -> kube::Result<()> {
        let Some(stores) = &self.stores.gateway else {
            return Ok(());
        };
        let Some(class) = stores
            .classes
            .get(&kube::runtime::reflector::ObjectRef::new(&status.name))
        else {
            return Ok(());
        };
        let previous = serde_json::to_value(&class.status).unwrap_or(Value::Null);
        let conditions = conditions(
            &status.conditions[..1],
            class.metadata.generation,
            &previous["conditions"],
        );
        if previous["conditions"] != conditions {
            let api: Api<GatewayClass> = Api::all(self.client.clone());
            api.patch_status(
                &status.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": conditions}})),
            )
            .await?;
        }
        Ok(())
    }

    async fn gateway(
        &self,
        status: &ObjectStatus,
        addresses: &[(bool, String)],
    ) -> kube::Result<()> {
        let Some(stores) = &self.stores.gateway else {
            return Ok(());
        };
        let Some(gateway) = stores
            .gateways
            .get(&kube::runtime::reflector::ObjectRef::new(&status.name).within(&status.namespace))
        else {
            return Ok(());
        };
        let generation = gateway.metadata.generation;
        let previous = serde_json::to_value(&gateway.status).unwrap_or(Value::Null);
        let accepted = status.conditions[0].clone();
        let programmed = if !accepted.status {
            condition(
                "Programmed",
                false,
                Reason::Invalid,
                "the Gateway is not accepted",
            )
        } else if addresses.is_empty() {
            condition(
                "Programmed",
                false,
                Reason::AddressNotAssigned,
                "the proxy Service has no address yet",
            )
        } else {
            condition(
                "Programmed",
                true,
                Reason::Programmed,
                "served by the Portcullis proxies",
            )
        };
        let conditions = conditions(&[accepted, programmed], generation, &previous["conditions"]);
        let listeners: Vec<Value> = status
            .sections
            .iter()
            .map(|section| {
                let before = previous["listeners"]
                    .as_array()
                    .and_then(|l| l.iter().find(|x| x["name"] == section.name.as_str()))
                    .map(|x| x["conditions"].clone())
                    .unwrap_or(Value::Null);
                json!({
                    "name": section.name,
                    "supportedKinds": [{"group": GATEWAY_GROUP, "kind": "HTTPRoute"}],
                    "attachedRoutes": section.attached_routes.unwrap_or(0),
                    "conditions": self::conditions(&section.conditions, generation, &before),
                })
            })
            .collect();
        let addresses: Vec<Value> = addresses
            .iter()
            .map(|(ip, value)| {
                json!({"type": if *ip { "IPAddress" } else { "Hostname" }, "value": value})
            })
            .collect();
        let desired =
            json!({"addresses": addresses, "conditions": conditions, "listeners": listeners});
        let current = json!({
            "addresses": previous.get("addresses").cloned().unwrap_or(json!([])),
            "conditions": previous.get("conditions").cloned().unwrap_or(json!([])),
            "listeners": previous.get("listeners").cloned().unwrap_or(json!([])),
        });
        if current != desired {
            let api: Api<Gateway> = Api::namespaced(self.client.clone(), &status.namespace);
            api.patch_status(
                &status.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": desired })),
            )
            .await?;
        }
        Ok(())
    }

    async fn http_route(&self, status: &ObjectStatus) -> kube::Result<()> {
        let Some(stores) = &self.stores.gateway else {
            return Ok(());
        };
        let Some(route) = stores
            .routes
            .get(&kube::runtime::reflector::ObjectRef::new(&status.name).within(&status.namespace))
        else {
            return Ok(());
        };
        let generation = route.metadata.generation;
        let previous = serde_json::to_value(&route.status).unwrap_or(Value::Null);
        let before: Vec<Value> = previous["parents"].as_array().cloned().unwrap_or_default();
        // Other controllers' entries stay as they are.
        let mut parents: Vec<Value> = before
            .iter()
            .filter(|p| p["controllerName"] != GATEWAY_CONTROLLER)
            .cloned()
            .collect();
        for section in &status.sections {
            let (namespace, name) = section.name.split_once('/').unwrap_or(("", &section.name));
            let mut parent_ref = json!({
                "group": GATEWAY_GROUP, "kind": "Gateway", "namespace": namespace, "name": name,
            });
            if let Some(s) = &section.section_name {
                parent_ref["sectionName"] = json!(s);
            }
            if let Some(p) = section.port {
                parent_ref["port"] = json!(p);
            }
            let old = before
                .iter()
                .find(|p| p["controllerName"] == GATEWAY_CONTROLLER && p["parentRef"] == parent_ref)
                .map(|p| p["conditions"].clone())
                .unwrap_or(Value::Null);
            parents.push(json!({
                "parentRef": parent_ref,
                "controllerName": GATEWAY_CONTROLLER,
                "conditions": conditions(&section.conditions, generation, &old),
            }));
        }
        if previous["parents"] != Value::Array(parents.clone()) {
            let api: Api<HTTPRoute> = Api::namespaced(self.client.clone(), &status.namespace);
            api.patch_status(
                &status.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"parents": parents}})),
            )
            .await?;
        }
        Ok(())
    }
}

fn condition(type_: &str, status: bool, reason: Reason, message: &str) -> ConditionOut {
    ConditionOut {
        type_: type_.to_string(),
        status,
        reason,
        message: message.to_string(),
    }
}

/// Gateway API conditions: `lastTransitionTime` kept from `previous` while the status is
/// unchanged.
fn conditions(list: &[ConditionOut], generation: Option<i64>, previous: &Value) -> Value {
    let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    Value::Array(
        list.iter()
            .map(|c| {
                let status = if c.status { "True" } else { "False" };
                let before = previous
                    .as_array()
                    .and_then(|l| l.iter().find(|p| p["type"] == c.type_.as_str()));
                let since = before
                    .filter(|p| p["status"] == status)
                    .and_then(|p| p["lastTransitionTime"].as_str())
                    .map(str::to_string)
                    .unwrap_or_else(|| now.clone());
                json!({
                    "type": c.type_,
                    "status": status,
                    "reason": c.reason.as_str(),
                    "message": truncate(&c.message),
                    "observedGeneration": generation.unwrap_or(0),
                    "lastTransitionTime": since,
                })
            })
            .collect(),
    )
}

/// Condition and Event messages are bounded (32768 and 1024 bytes by the API server).
fn truncate(message: &str) -> String {
    const MAX: usize = 1000;
    if message.len() <= MAX {
        return message.to_string();
    }
    let mut end = MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

fn reference<K: Resource<DynamicType = ()>>(object: &K) -> ObjectReference {
    object.object_ref(&())
}
