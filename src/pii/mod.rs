//! Buyer-PII categories, the actions a role may get for each, and roles.
//!
//! A role decides, category by category, what a seller tool receives: `pass` (in clear), `mask`,
//! `pseudonymize`, `encrypt`, or `drop` (the default for anything not granted, and for unknown
//! roles). Upstream of the response policy, the same grants decide which restricted data the
//! gateway asks Amazon for at all: Restricted Data Token `dataElements` and Orders 2026-01-01
//! `includedData` only name what the role may receive in some form.
//!
//! The response policy itself:
//! - [`map`]: the buyer-PII field map (`data/pii-fields.tsv`): paths, categories, record roots.
//! - [`transform`]: the pure function of (operation, role, JSON, keys) that applies it, with the
//!   safety net ([`net`]) outside the map, masks ([`mask`]) and the keys ([`keys`]).

pub mod classify;
pub mod keys;
pub mod map;
pub mod mask;
pub mod net;
pub mod stream;
pub mod transform;

pub use classify::{Classification, Classifier};
pub use keys::{Keys, NoOrderKeys, OrderKeys, PseudonymKey};
pub use map::{FieldMap, FieldSpec, IdSource, LinkSpec, OpMap, RecordSpec};
pub use transform::{
    apply, apply_bytes, apply_value, order_ids, orders, parse, serialize, FieldOut, NetHits,
    OrderFacts, PiiError, Policy, Report,
};

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A kind of buyer PII (from the field map of Amazon's models).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// Buyer or recipient name.
    Name,
    /// E-mail address.
    Email,
    /// Phone number.
    Phone,
    /// Street address lines.
    Address,
    /// Postal code.
    PostalCode,
    /// City, county, region, country.
    CoarseLocation,
    /// Company name.
    Company,
    /// Tax ids and tax addresses.
    TaxId,
    /// Gift message text.
    GiftMessage,
    /// Customization URL.
    CustomizationUrl,
    /// Delivery instructions, drop-off location.
    DeliveryInstructions,
    /// Regulated information (e.g. prescriptions).
    RegulatedInfo,
    /// Shipping labels, packing slips, invoices (documents showing the buyer's address).
    Document,
}

/// What a role gets for a category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// In clear.
    Pass,
    /// Shape-preserving mask (e.g. a postal code keeps its first two characters).
    Mask,
    /// Keyed HMAC, stable per seller.
    Pseudonymize,
    /// AES-256-GCM field envelope, revealable through the gateway.
    Encrypt,
    /// Removed.
    Drop,
}

/// A role: an action per category; anything not listed is dropped. Separately, the categories
/// whose `encrypt`ed values it may reveal through the gateway.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Role {
    actions: BTreeMap<Category, Action>,
    reveal: std::collections::BTreeSet<Category>,
}

/// Every configured role by name. Unknown roles get nothing.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    roles: BTreeMap<String, Role>,
}

// === impl Category ===

impl Category {
    /// Every category.
    pub const ALL: [Category; 13] = [
        Category::Name,
        Category::Email,
        Category::Phone,
        Category::Address,
        Category::PostalCode,
        Category::CoarseLocation,
        Category::Company,
        Category::TaxId,
        Category::GiftMessage,
        Category::CustomizationUrl,
        Category::DeliveryInstructions,
        Category::RegulatedInfo,
        Category::Document,
    ];

    /// The name used in config and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Name => "name",
            Category::Email => "email",
            Category::Phone => "phone",
            Category::Address => "address",
            Category::PostalCode => "postal_code",
            Category::CoarseLocation => "coarse_location",
            Category::Company => "company",
            Category::TaxId => "tax_id",
            Category::GiftMessage => "gift_message",
            Category::CustomizationUrl => "customization_url",
            Category::DeliveryInstructions => "delivery_instructions",
            Category::RegulatedInfo => "regulated_info",
            Category::Document => "document",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Category {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Category::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Category::ALL.iter().map(|c| c.as_str()).collect();
                format!(
                    "unknown PII category {s:?} (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

// === impl Action ===

impl Action {
    /// The name used in config and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pass => "pass",
            Action::Mask => "mask",
            Action::Pseudonymize => "pseudonymize",
            Action::Encrypt => "encrypt",
            Action::Drop => "drop",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pass" => Ok(Action::Pass),
            "mask" => Ok(Action::Mask),
            "pseudonymize" => Ok(Action::Pseudonymize),
            "encrypt" => Ok(Action::Encrypt),
            "drop" => Ok(Action::Drop),
            other => Err(format!(
                "unknown action {other:?} (expected pass, mask, pseudonymize, encrypt or drop)"
            )),
        }
    }
}

// === impl Role ===

impl Role {
    /// A role with these grants.
    pub fn new(actions: impl IntoIterator<Item = (Category, Action)>) -> Role {
        Role {
            actions: actions.into_iter().collect(),
            reveal: Default::default(),
        }
    }

    /// The same role, allowed to reveal encrypted values of these categories.
    pub fn with_reveal(mut self, categories: impl IntoIterator<Item = Category>) -> Role {
        self.reveal.extend(categories);
        self
    }

    /// Whether the role may reveal an encrypted value of this category.
    pub fn may_reveal(&self, category: Category) -> bool {
        self.reveal.contains(&category)
    }

    /// The action for a category (drop unless granted).
    pub fn action(&self, category: Category) -> Action {
        self.actions.get(&category).copied().unwrap_or(Action::Drop)
    }

    /// Whether the role receives the category in any form.
    pub fn receives(&self, category: Category) -> bool {
        self.action(category) != Action::Drop
    }

    /// Whether the role receives any of the categories in any form.
    pub fn receives_any(&self, categories: &[Category]) -> bool {
        categories.iter().any(|c| self.receives(*c))
    }

    /// The same role receiving only `categories` (every other one dropped): what a gateway
    /// Restricted Data Token's `dataElements` narrow it to.
    pub fn only(&self, categories: &[Category]) -> Role {
        Role {
            actions: self
                .actions
                .iter()
                .filter(|(c, _)| categories.contains(c))
                .map(|(c, a)| (*c, *a))
                .collect(),
            reveal: self.reveal.clone(),
        }
    }
}

// === impl Roles ===

impl Roles {
    /// Roles by name.
    pub fn new(roles: BTreeMap<String, Role>) -> Roles {
        Roles { roles }
    }

    /// The named role; an unknown role gets nothing (every category dropped).
    pub fn get(&self, name: &str) -> &Role {
        static NOBODY: Role = Role {
            actions: BTreeMap::new(),
            reveal: std::collections::BTreeSet::new(),
        };
        self.roles.get(name).unwrap_or(&NOBODY)
    }

    /// Whether a role of this name is configured.
    pub fn contains(&self, name: &str) -> bool {
        self.roles.contains_key(name)
    }
}

#[cfg(test)]
mod tests;
