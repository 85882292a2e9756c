pub async fn charge(&self, order: &Order) -> Result<Receipt, PayError> {
    #![allow(unused_variables)]
    let __idem_call = ::idem::__private::Call::new("charge-v2", &(order.id))
        .fingerprint(&(order))
        .retention(::core::time::Duration::new(3600u64, 0u32))
        .lease(::core::time::Duration::new(10u64, 0u32))
        .on_in_progress(::idem::__private::OnInProgress::Reject);
    let __idem_runtime = ::idem::__private::runtime(&self.idem);
    ::idem::__private::ClassifiedRecordedReturn::run_idempotent_with(
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
            PayError::means,
        )
        .await
}
