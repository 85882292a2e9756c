async fn charge(
    &self,
    conn: &mut PgConnection,
    order: &Order,
) -> Result<Receipt, PayError> {
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
    let mut __idem_claim = match ::idem::__private::begin_in_transaction(
            &__idem_runtime,
            __idem_call,
            &mut *conn,
        )
        .await
    {
        ::idem::__private::TransactionBegun::Done(__idem_result) => return __idem_result,
        ::idem::__private::TransactionBegun::Claimed(__idem_claim) => __idem_claim,
    };
    let __idem_context = __idem_claim.context();
    let __idem_result = {
        let conn = __idem_claim.connection();
        ::idem::__private::with_context(
                __idem_context,
                async move {
                    if let ::core::option::Option::Some(__idem_ret) = ::core::option::Option::None::<
                        Result<Receipt, PayError>,
                    > {
                        #[allow(unreachable_code)] return __idem_ret;
                    }
                    insert_charge(conn, order).await
                },
            )
            .await
    };
    __idem_claim.finish(__idem_result).await
}
