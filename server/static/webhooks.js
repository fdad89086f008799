// @ts-check
// The Webhooks card: the environment's endpoints, adding one (its signing secret is shown
// once, right after, and forgotten with the key), and an endpoint's deliveries with their
// status, attempts and a "Send again" button (README, Webhooks).
import { $, $input, announce, h, timeEl } from "./dom.js";
import { clearAlert, getJson, request, showProblem } from "./api.js";

const EVENT_TYPES = ["bulk_request.completed", "bulk_request.failed", "bulk_request.cancelled"];

/** The endpoint whose deliveries are shown, if any. */
let openEndpoint = /** @type {number | null} */ (null);

export async function loadWebhooks() {
  try {
    const page = await getJson("/v1/webhook_endpoints?limit=200");
    renderEndpoints(page.data);
    if (openEndpoint !== null) await loadDeliveries(openEndpoint);
  } catch (err) {
    showProblem(err, "Could not load webhook endpoints");
  }
}

/** Forget everything shown, the one-time secret above all (called when the key goes). */
export function clearWebhooks() {
  openEndpoint = null;
  $("webhook-list").replaceChildren();
  $("webhook-secret-box").hidden = true;
  $("webhook-secret").textContent = "";
  $("webhook-deliveries-box").hidden = true;
  $("webhook-deliveries-body").replaceChildren();
  $("webhook-result").textContent = "";
}

/** @param {any[]} endpoints */
function renderEndpoints(endpoints) {
  $("webhook-empty").hidden = endpoints.length > 0;
  $("webhook-list").replaceChildren(
    ...endpoints.map((endpoint) => {
      const show = h("button", {
        type: "button",
        class: "button-secondary",
        text: "Deliveries",
        "aria-label": `Deliveries of ${endpoint.url}`,
      });
      show.addEventListener("click", () => loadDeliveries(endpoint.id));
      const state = endpoint.enabled ? (endpoint.circuit_open_until ? "paused (failing)" : "enabled") : "disabled";
      return h(
        "li",
        { class: "webhook-item", "data-endpoint-id": endpoint.id },
        h("code", { class: "webhook-url", text: endpoint.url }),
        h("span", { class: "hint", text: ` ${endpoint.events.join(", ")} · ${state}` }),
        endpoint.description ? h("span", { class: "hint", text: ` · ${endpoint.description}` }) : null,
        " ",
        show,
      );
    }),
  );
}

/** @param {number} endpointId */
async function loadDeliveries(endpointId) {
  try {
    const page = await getJson(`/v1/webhook_endpoints/${endpointId}/deliveries?limit=50`);
    openEndpoint = endpointId;
    $("webhook-deliveries-box").hidden = false;
    $("webhook-deliveries-empty").hidden = page.data.length > 0;
    $("webhook-deliveries-body").replaceChildren(...page.data.map((d) => deliveryRow(endpointId, d)));
  } catch (err) {
    showProblem(err, "Could not load deliveries");
  }
}

/**
 * @param {number} endpointId
 * @param {any} delivery
 */
function deliveryRow(endpointId, delivery) {
  const last = delivery.attempts[delivery.attempts.length - 1];
  const again = h("button", { type: "button", class: "button-secondary", text: "Send again" });
  again.addEventListener("click", async () => {
    try {
      await request(`/v1/webhook_endpoints/${endpointId}/deliveries/${delivery.id}/retry`, { method: "POST" });
      announce(`Delivery ${delivery.id} will be sent again now.`);
      await loadDeliveries(endpointId);
    } catch (err) {
      showProblem(err, "Could not send the delivery again");
    }
  });
  return h(
    "tr",
    { "data-delivery-id": delivery.id },
    h("td", {}, timeEl(delivery.created_at)),
    h("td", { text: delivery.type }),
    h("td", {}, h("a", { href: `#/requests/${delivery.bulk_request_id}`, text: `#${delivery.bulk_request_id}` })),
    h("td", {}, h("span", { class: `badge badge-${delivery.status}`, text: delivery.status })),
    h("td", { text: String(delivery.attempts.length) }),
    h("td", { text: last ? (last.error ?? `HTTP ${last.http_status}`) : "—" }),
    h("td", {}, again),
  );
}

/** @param {SubmitEvent} event */
export async function submitWebhook(event) {
  event.preventDefault();
  const url = $input("webhook-url").value.trim();
  const description = $input("webhook-description").value.trim();
  const events = EVENT_TYPES.filter((type) => $input(`webhook-event-${type.split(".")[1]}`).checked);
  if (!url) {
    showProblem({ title: "A webhook endpoint needs a URL", detail: "Give the absolute http or https URL your receiver listens on." });
    $input("webhook-url").focus();
    return;
  }
  /** @type {Record<string, unknown>} */
  const body = { url, events };
  if (description) body.description = description;
  try {
    const created = await (await request("/v1/webhook_endpoints", { method: "POST", body })).json();
    clearAlert();
    $("webhook-secret").textContent = created.secret;
    $("webhook-secret-box").hidden = false;
    $("webhook-result").textContent = `Added ${created.url}.`;
    $input("webhook-url").value = "";
    $input("webhook-description").value = "";
    await loadWebhooks();
  } catch (err) {
    $("webhook-result").textContent = "";
    showProblem(err, "Could not add the webhook endpoint");
  }
}
