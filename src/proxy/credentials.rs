//! Phase 5, credentials: the token a request goes upstream with (the seller's LWA access
//! token, a grantless token, or a Restricted Data Token asking only for what the role may
//! receive), and forgetting it when Amazon rejects it (or healing it: a bare 403 on an old
//! token, see [`Gateway::heal`]).

use std::time::Duration;

use crate::auth::lwa::{Grant, Heal, LwaError, Subject};
use crate::auth::rdt::{self, Need, RdtError, RdtKey};
use crate::catalog::Operation;
use crate::pii::Role;
use crate::ratelimit::{Acquire, Priority};
use crate::secret::Secret;
use crate::store::{SellerRecord, SellerStatus};

use super::rescue::ProxyError;
use super::{Gateway, TokenKind};

/// The token a request is sent upstream with, and where it came from (to forget it if Amazon
/// rejects it).
pub(super) enum Credential {
    /// An LWA access token (seller or grantless).
    Access(Subject, Secret<String>),
    /// A Restricted Data Token, and the access token it was obtained with.
    Rdt(RdtKey, Secret<String>, Subject, Secret<String>),
}

impl Credential {
    pub(super) fn token(&self) -> &Secret<String> {
        match self {
            Credential::Access(_, t) | Credential::Rdt(_, t, _, _) => t,
        }
    }

    pub(super) fn kind(&self) -> TokenKind {
        match self {
            Credential::Access(Subject::Grantless(_), _) => TokenKind::Grantless,
            Credential::Access(Subject::Seller(_), _) => TokenKind::Lwa,
            Credential::Rdt(..) => TokenKind::Rdt,
        }
    }
}

impl Gateway {
    /// Phase 5: the token for `x-amz-access-token`: the seller's (or a grantless) access token,
    /// or for restricted operations a Restricted Data Token asking only for what the role may
    /// receive. Failing to get an RDT fails the request: restricted data is never fetched with
    /// a plain token. Under a gateway RDT, `within` names the `dataElements` it allows: the RDT
    /// asks for no others, and for none at all the plain token serves (no buyer data then).
    pub(super) async fn credentials(
        &self,
        op: &Operation,
        seller: Option<&SellerRecord>,
        role: &Role,
        path: &str,
        tool: &str,
        within: Option<&[&'static str]>,
    ) -> Result<Credential, ProxyError> {
        let (subject, access) = self.access_token(op, seller).await?;
        let (true, Some(seller)) = (op.restricted, seller) else {
            return Ok(Credential::Access(subject, access));
        };
        let need = match (rdt::need(op, role), within) {
            (Need::Rdt(elements), Some(within)) => {
                let elements: Vec<_> = elements
                    .into_iter()
                    .filter(|e| within.contains(e))
                    .collect();
                if elements.is_empty() {
                    Need::Plain
                } else {
                    Need::Rdt(elements)
                }
            }
            (need, _) => need,
        };
        match need {
            Need::Plain => Ok(Credential::Access(subject, access)),
            Need::Refused => Err(ProxyError::RoleMayNotReceive),
            Need::Rdt(elements) => {
                let key = RdtKey::new(&seller.selling_partner_id, op, path, elements);
                let endpoint = self.endpoints.for_region(seller.region);
                let admit = self.admit_rdt(&seller.selling_partner_id, tool);
                match self.rdts.token(&key, endpoint, &access, admit).await {
                    Ok(token) => Ok(Credential::Rdt(key, token, subject, access)),
                    Err(e) => {
                        if matches!(e, RdtError::Refused(s) if s == http::StatusCode::UNAUTHORIZED)
                        {
                            self.lwa.invalidate(&subject, &access).await;
                        }
                        Err(e.into())
                    }
                }
            }
        }
    }

    /// The LWA access token for the seller, or the grantless token for the operation's scope.
    pub(super) async fn access_token(
        &self,
        op: &Operation,
        seller: Option<&SellerRecord>,
    ) -> Result<(Subject, Secret<String>), ProxyError> {
        match (op.grantless_scope, seller) {
            (Some(scope), _) => {
                let subject = Subject::Grantless(scope);
                let token = self
                    .lwa
                    .token(&subject, || Ok(Grant::ClientCredentials(scope)))
                    .await?;
                Ok((subject, token))
            }
            (None, Some(seller)) => {
                let subject = Subject::Seller(seller.selling_partner_id.clone());
                let result = self
                    .lwa
                    .token(&subject, || {
                        let aad = format!("refresh_token:{}", seller.selling_partner_id);
                        self.master_key
                            .open_str(&seller.refresh_token_sealed, aad.as_bytes())
                            .map(Grant::RefreshToken)
                            .map_err(|e| LwaError::RefreshToken(e.to_string()))
                    })
                    .await;
                match result {
                    Ok(token) => Ok((subject, token)),
                    Err(LwaError::InvalidGrant) => {
                        self.store
                            .set_seller_status(
                                &seller.selling_partner_id,
                                SellerStatus::Deauthorized,
                            )
                            .await?;
                        tracing::warn!(seller = %seller.selling_partner_id, "Seller deauthorized: LWA answered invalid_grant.");
                        self.auditor
                            .record_async(
                                crate::audit::Record::new(crate::audit::Kind::SellerDeauthorized)
                                    .with_seller(&seller.selling_partner_id)
                                    .with_reason(crate::audit::Reason::from_static(
                                        "lwa_invalid_grant",
                                    )),
                            )
                            .await;
                        Err(ProxyError::SellerDeauthorized)
                    }
                    Err(e) => Err(e.into()),
                }
            }
            (None, None) => Err(ProxyError::UnknownSeller),
        }
    }

    /// A token of the seller's createRestrictedDataToken bucket (1/s, burst 10), taken only
    /// when an RDT must be fetched; refused, the request fails closed with 503.
    pub(super) async fn admit_rdt(&self, seller: &str, tool: &str) -> Result<(), RdtError> {
        let op = self.catalog.by_key(rdt::RDT_OPERATION).ok_or_else(|| {
            RdtError::Protocol("createRestrictedDataToken is not catalogued".into())
        })?;
        self.limiter
            .acquire(Acquire {
                seller,
                operation: op,
                tool,
                plan: None,
                priority: Priority::Normal,
                max_wait: Some(RDT_MAX_WAIT),
            })
            .await
            .map(|_| ())
            .map_err(|e| RdtError::Unavailable(format!("no createRestrictedDataToken quota: {e}")))
    }

    /// A bare 403 on `cred`: whether its access token is taken as lost ([`Lwa::heal`], bounded
    /// per seller or grantless scope, shared by the seller's RDTs); an RDT made with a token
    /// that is refreshed or replaced is forgotten with it.
    ///
    /// [`Lwa::heal`]: crate::auth::lwa::Lwa::heal
    pub(super) async fn heal(&self, cred: &Credential) -> Heal {
        match cred {
            Credential::Access(subject, token) => self.lwa.heal(subject, token).await,
            Credential::Rdt(key, token, subject, access) => {
                let heal = self.lwa.heal(subject, access).await;
                if heal.retries() {
                    self.rdts.invalidate(key, token).await;
                }
                heal
            }
        }
    }

    /// Forgets credentials Amazon rejected (and the access token an RDT was made with).
    pub(super) async fn forget(&self, cred: &Credential) {
        match cred {
            Credential::Access(subject, token) => self.lwa.invalidate(subject, token).await,
            Credential::Rdt(key, token, subject, access) => {
                self.rdts.invalidate(key, token).await;
                self.lwa.invalidate(subject, access).await;
            }
        }
    }
}

/// Longest wait for a createRestrictedDataToken token.
const RDT_MAX_WAIT: Duration = Duration::from_secs(5);
