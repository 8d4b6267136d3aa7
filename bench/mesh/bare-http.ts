// Baseline: a bare Node http server answering the same JSON, with no mesh behind it.
import http from "http";

http
	.createServer((req, res) => {
		let body = "";
		req.on("data", c => (body += c));
		req.on("end", () => {
			const { message } = JSON.parse(body || "{}");
			res.writeHead(200, { "Content-Type": "application/json; charset=utf-8" });
			res.end(JSON.stringify({ message, nodeID: "bare-http" }));
		});
	})
	.listen(Number(process.env.PORT), "127.0.0.1", () => process.stdout.write("READY\n"));
