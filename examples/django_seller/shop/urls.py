from django.http import HttpRequest, JsonResponse
from django.urls import path
from fourmica_x402.adapters.django import paid


def free(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"free": True})


@paid(price="$0.01", methods=["GET"])  # GET (and HEAD); other methods: 405
def premium(request: HttpRequest) -> JsonResponse:
    payment = request.payment  # type: ignore[attr-defined]
    return JsonResponse(
        {"premium": "the good stuff", "payer": payment.payer, "guarantee": payment.guarantee_id}
    )


urlpatterns = [path("free", free), path("premium", premium)]
