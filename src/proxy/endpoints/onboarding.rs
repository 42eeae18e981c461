//! `GET /oauth/start` and `GET /oauth/callback`: the website authorization workflow (see
//! [`crate::auth::onboarding`]); refusals that look like squatting a seller id are alerted.

use http::{Request, Response};

use crate::auth::onboarding::{self, Onboarding, OnboardingError};
use crate::net::body::Body;
use crate::proxy::rescue::ProxyError;
use crate::proxy::{unix_now, Gateway};

impl Gateway {
    /// `/oauth/start` and `/oauth/callback`: the website authorization workflow.
    pub(in crate::proxy) async fn onboarding<B>(
        &self,
        req: &Request<B>,
    ) -> Result<Response<Body>, ProxyError> {
        let cfg = self
            .onboarding
            .as_ref()
            .ok_or(OnboardingError::NotConfigured)?;
        if req.method() != http::Method::GET {
            return Err(ProxyError::NotFound);
        }
        let flow = Onboarding {
            cfg,
            store: &*self.store,
            key: &self.master_key,
            lwa: &self.lwa,
            client: self.upstream.client(),
            endpoints: &self.endpoints,
        };
        let query = req.uri().query();
        let resp = match req.uri().path() {
            onboarding::START_PATH => flow.start(query, unix_now()).await?,
            _ => match flow.callback(query, unix_now()).await {
                // An attempt to squat or rebind a seller id: alerted in the audit log too.
                Err(e @ OnboardingError::SellerNotConfirmed { .. }) => {
                    if let OnboardingError::SellerNotConfirmed {
                        claimed, rebind, ..
                    } = &e
                    {
                        self.auditor
                            .record_async(
                                crate::audit::Record::new(crate::audit::Kind::Alert)
                                    .with_seller(claimed)
                                    .with_reason(crate::audit::Reason::from_static(if *rebind {
                                        "onboarding_rebind_refused"
                                    } else {
                                        "onboarding_seller_not_confirmed"
                                    })),
                            )
                            .await;
                    }
                    return Err(e.into());
                }
                // A re-authorization link answered with another seller's id.
                Err(e @ OnboardingError::WrongSeller { .. }) => {
                    if let OnboardingError::WrongSeller { expected } = &e {
                        self.auditor
                            .record_async(
                                crate::audit::Record::new(crate::audit::Kind::Alert)
                                    .with_seller(expected)
                                    .with_reason(crate::audit::Reason::from_static(
                                        "onboarding_wrong_seller",
                                    )),
                            )
                            .await;
                    }
                    return Err(e.into());
                }
                other => other?,
            },
        };
        if let Some(onboarding::Authorized(seller)) = resp.extensions().get() {
            // A security action: not confirmed before its record is written.
            self.auditor
                .record_durable(
                    crate::audit::Record::new(crate::audit::Kind::SellerAuthorized)
                        .with_seller(seller)
                        .with_reason(crate::audit::Reason::from_static("website_authorization")),
                )
                .await
                .map_err(|_| ProxyError::AuditUnavailable)?;
        }
        Ok(resp)
    }
}
