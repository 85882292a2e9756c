fn post<'life0, 'async_trait>(
    &'life0 self,
    id: u64,
) -> ::core::pin::Pin<
    Box<
        dyn ::core::future::Future<
            Output = Result<u64, Error>,
        > + ::core::marker::Send + 'async_trait,
    >,
> {
    ::std::boxed::Box::pin(async move {
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
            &(id),
        );
        let __idem_runtime = ::idem::__private::runtime(
            ::idem::__private::default_runtime(),
        );
        ::idem::__private::IdempotentReturn::run_idempotent(
                __idem_runtime,
                __idem_call,
                async move {
                    let __self = self;
                    let __ret: Result<u64, Error> = { Ok(id) };
                    __ret
                },
            )
            .await
    })
}
