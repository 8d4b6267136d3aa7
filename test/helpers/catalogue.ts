/**
 * The action catalogue a running mesh announces, read by an in-process broker that joins its
 * namespace over NATS: every action's name, `rest`, `access` and params schema, as the gateways see them.
 */
import { ServiceBroker } from "moleculer";
import { waitFor } from "./cluster";
import { LOCAL_NATS_URL } from "./requirements";

export interface CatalogueAction {
	name: string;
	rest?: unknown;
	access?: unknown;
	params?: Record<string, unknown>;
}

export async function readCatalogue(namespace: string, services: string[], natsUrl = LOCAL_NATS_URL): Promise<CatalogueAction[]> {
	const broker = new ServiceBroker({ namespace, nodeID: `catalogue-${process.pid}-${Date.now()}`, transporter: natsUrl as "NATS", logger: false, heartbeatInterval: 1 });
	await broker.start();
	try {
		const list = () =>
			(broker.registry.getActionList({ skipInternal: true, onlyAvailable: true }) as unknown as Array<{ name: string; action?: CatalogueAction }>).filter(
				item => item.action,
			);
		await waitFor(`the catalogue to list ${services.join(", ")}`, async () => services.every(s => list().some(a => a.name.startsWith(`${s}.`))), 20_000);
		return list().map(item => ({ ...item.action!, name: item.name }));
	} finally {
		await broker.stop();
	}
}
