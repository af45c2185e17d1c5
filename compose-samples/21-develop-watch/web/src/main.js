console.log("hello from vite");
