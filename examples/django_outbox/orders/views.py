"""A sync view: the order and its event commit before the response is sent."""

from django.http import HttpRequest, JsonResponse

from .services import OrderRejected, place_order


def place_order_view(request: HttpRequest) -> JsonResponse:
    """POST ``item``; ``reject`` rolls the order and its event back."""
    try:
        order_id = place_order(request.POST["item"], reject="reject" in request.POST)
    except OrderRejected:
        return JsonResponse({"rolled_back": True}, status=409)
    return JsonResponse({"id": order_id}, status=201)
