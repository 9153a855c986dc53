//! The component glue of the `directory-provider` world (feature
//! `directory-provider`): the directory of a composed gateway. The socket
//! loads it; the plugged policy reads it through `attrelay:policy/directory`,
//! the same lookups the relay's engine answers.

use std::cell::RefCell;
use std::rc::Rc;

use attrelay_engine::directory::{Directory, RecipientCheck};
use attrelay_policy::model::{self, Directory as _};

use crate::tenants::{self, Format};

wit_bindgen::generate!({
    path: "../wit/gateway",
    world: "directory-provider",
    generate_all,
});

use attrelay::gateway::types::DirectoryFormat;
use attrelay::policy::types as wit;
use exports::attrelay::gateway::directory_store::Guest as StoreGuest;
use exports::attrelay::policy::directory::Guest as DirectoryGuest;

thread_local! {
    /// Empty until `load`: an empty directory attributes nothing.
    static DIRECTORY: RefCell<Rc<Directory>> = RefCell::new(Rc::new(Directory::default()));
}

fn directory() -> Rc<Directory> {
    DIRECTORY.with(|d| d.borrow().clone())
}

struct Component;

impl StoreGuest for Component {
    fn load(text: String, format: DirectoryFormat) -> Result<(), String> {
        let format = match format {
            DirectoryFormat::Toml => Format::Toml,
            DirectoryFormat::Json => Format::Json,
        };
        let loaded = tenants::load(&text, format)?;
        DIRECTORY.with(|d| *d.borrow_mut() = Rc::new(loaded));
        Ok(())
    }

    fn has_tenant(id: String) -> bool {
        directory().has_tenant(&id)
    }

    fn unknown_recipient(address: String) -> Option<String> {
        match directory().recipient_check(&address) {
            RecipientCheck::Unknown { tenant } => Some(tenant),
            _ => None,
        }
    }
}

impl DirectoryGuest for Component {
    fn connectors_by_ip(ip: wit::IpAddress) -> Vec<wit::Connector> {
        to_wit(directory().connectors_by_ip(ip_from_wit(ip)))
    }
    fn connectors_by_certificate_name(name: String) -> Vec<wit::Connector> {
        to_wit(directory().connectors_by_certificate_name(&name))
    }
    fn connectors_of_tenant(tenant: String) -> Vec<wit::Connector> {
        to_wit(directory().connectors_of_tenant(&tenant))
    }
    fn tenant_of_domain(domain: String) -> Option<String> {
        directory().tenant_of_domain(&domain)
    }
}

fn to_wit(connectors: Vec<model::Connector>) -> Vec<wit::Connector> {
    connectors.into_iter().map(connector_to_wit).collect()
}

attrelay_policy::wit_conversions!(wit);

export!(Component);
