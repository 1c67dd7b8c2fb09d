import "./globals.css";

export const metadata = { title: "Todo Chatbot", description: "Tasks with a chat assistant" };

export default function RootLayout({ children }) {
  return (
    <html lang="en">
      <body>{children}</body>
    </html>
  );
}
