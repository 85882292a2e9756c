async fn create(
    State(app): State<App>,
    user: User,
    key: IdempotencyKey,
    mut conn: Connection,
    Json(order): Json<Order>,
) -> Result<(StatusCode, Json<Receipt>), Problem> {
    let __idem_pick = {
        #[allow(unused_imports)]
        use ::idem::__private::{PickJson as _, PickValue as _};
        (&::idem::__private::Returns::<
            Result<(StatusCode, Json<Receipt>), Problem>,
        >::new())
            .__idem_pick()
    };
    __idem_pick
        .to_completion(async move {
            let __idem_call = ::idem::__private::Call::in_function(
                    {
                        struct __IdemNamespace;
                        ::idem::__private::inventory::submit! {
                            ::idem::__private::Marker { of :
                            ::idem::__private::marker_of:: < __IdemNamespace >, at :
                            (::core::file!(), ::core::line!(), ::core::column!()), }
                        }
                        static __IDEM_NAMESPACE: ::idem::__private::FunctionNamespace = ::idem::__private::FunctionNamespace::new();
                        __IDEM_NAMESPACE.get(__IdemNamespace)
                    },
                    &(key),
                )
                .scope(&(user.id))
                .fingerprint(&(order));
            let __idem_runtime = ::idem::__private::runtime(&app.idem);
            let mut __idem_claim = match __idem_pick
                .begin_in_transaction(
                    &__idem_runtime,
                    __idem_call,
                    ::idem::__private::owned_connection(&mut conn),
                )
                .await
            {
                ::idem::__private::TxBegun::Done(__idem_result) => return __idem_result,
                ::idem::__private::TxBegun::Claimed(__idem_claim) => __idem_claim,
            };
            let __idem_context = __idem_claim.context();
            let __idem_result = {
                let conn = __idem_claim.connection();
                __idem_pick
                    .catch_panic(
                        ::idem::__private::with_context(
                            __idem_context,
                            async move {
                                if let ::core::option::Option::Some(__idem_ret) = ::core::option::Option::None::<
                                    Result<(StatusCode, Json<Receipt>), Problem>,
                                > {
                                    #[allow(unreachable_code)] return __idem_ret;
                                }
                                Ok((
                                    StatusCode::CREATED,
                                    Json(insert(&mut *conn, &order).await?),
                                ))
                            },
                        ),
                    )
                    .await
            };
            __idem_claim.finish(__idem_result).await
        })
        .await
}
