/** @type {import('next').NextConfig} */
const nextConfig = {
  // Standalone: a self-contained server.js with only the node_modules it needs (small image).
  output: "standalone",
  poweredByHeader: false,
  reactStrictMode: true,
};

export default nextConfig;
