async fn charge(&self, order: &Order) -> Result<Receipt, PayError> {
    let __idem_call = ::idem::__private::Call::in_function(
        {
            struct __IdemNamespace;
            ::idem::__private::inventory::submit! {
                ::idem::__private::Marker { of : ::idem::__private::marker_of:: <
                __IdemNamespace >, at : (::core::file!(), ::core::line!(),
                ::core::column!()), }
            }
            static __IDEM_NAMESPACE: ::idem::__private::FunctionNamespace = ::idem::__private::FunctionNamespace::new();
            __IDEM_NAMESPACE.get_for::<Self, _>(__IdemNamespace)
        },
        &(order.id),
    );
    let __idem_runtime = ::idem::__private::runtime(&self.idem);
    ::idem::__private::IdempotentReturn::run_idempotent(
            __idem_runtime,
            __idem_call,
            async move {
                if let ::core::option::Option::Some(__idem_ret) = ::core::option::Option::None::<
                    Result<Receipt, PayError>,
                > {
                    #[allow(unreachable_code)] return __idem_ret;
                }
                self.gateway.charge(order).await
            },
        )
        .await
}
