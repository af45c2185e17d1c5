require("http").createServer((q, r) => r.end("notes")).listen(3000);
