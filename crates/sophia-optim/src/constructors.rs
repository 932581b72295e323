//! Burn's constructor names for every config of this crate, derived from its `try_build`.

/// `build`, `try_init` and `init` from a config's fallible `try_build`, following Burn's
/// convention (`build` for one parameter group, `init` for a whole module; both panic on an
/// invalid config, the `try_` forms return the [`ConfigError`](crate::ConfigError)).
macro_rules! constructors {
    ($config:ty, $optimizer:ty, $module:ty, $name:literal) => {
        impl $config {
            /// Build the bare optimizer, for
            /// [`ModuleOptimizer::with_group`](burn::optim::ModuleOptimizer::with_group).
            ///
            /// # Panics
            /// On an invalid config, with the message `try_build` returns.
            pub fn build(&self) -> $optimizer {
                self.try_build().unwrap_or_else(|err| panic!("{err}"))
            }

            #[doc = concat!("Initialize ", $name, " for a whole module, or say which field is invalid.")]
            pub fn try_init(&self) -> Result<$module, $crate::ConfigError> {
                self.try_build().map(<$module>::from)
            }

            #[doc = concat!("Initialize ", $name, " for a whole module.")]
            ///
            /// # Panics
            /// On an invalid config, with the message `try_init` returns.
            pub fn init(&self) -> $module {
                <$module>::from(self.build())
            }
        }
    };
}
